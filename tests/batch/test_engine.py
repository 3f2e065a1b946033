"""The batch engine against a tiny fake task (no model): a rerun skips what is done and
``overwrite`` redoes it; a bad job is reported and the rest are written; Ctrl-C or SIGTERM
mid-batch leaves no partial file and an interrupted report; report.csv has the provenance
columns; two torchrun ranks share the jobs and rank 0 merges their reports."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from medrefine.batch import SKIPPED, Batch, Job, open_batch, sigterm_as_interrupt
from medrefine.errors import InputError
from medrefine.io import atomic_output

PROV = {"weights": {"fake": {"path": "fake.bin", "sha256": "ab" * 32}}, "seed": 7}


class Upper:
    """Writes ``<stem>.txt``: the input's text in upper case; a file holding ``bad`` fails,
    one holding ``stop`` receives SIGTERM half way through writing its output."""

    name, unit = "upper", "file"
    columns = ["input", "status", "outputs", "seconds", "error", "rank"]
    weights = ("fake",)

    def __init__(self, out: Path) -> None:
        self.out, self.made = out, []

    def outputs(self, job: Job) -> list[str]:
        return [f"{job.stem}.txt"]

    def make(self, job: Job, echo) -> dict:
        text = Path(job.source).read_text()
        if text == "bad":
            raise InputError(f"{job.source}: holds 'bad'; give good text")
        with atomic_output(self.out / f"{job.stem}.txt") as tmp:
            tmp.write_text(text[:1])
            if text == "stop":
                os.kill(os.getpid(), signal.SIGTERM)
            tmp.write_text(text.upper())
        self.made.append(job.stem)
        return {"input": str(job.source), "status": "ok", "outputs": [f"{job.stem}.txt"],
                "seconds": 0.0}  # fmt: skip


def inputs(folder: Path, texts: dict[str, str]) -> list[Job]:
    folder.mkdir(exist_ok=True)
    jobs = []
    for stem, text in texts.items():
        (folder / f"{stem}.in").write_text(text)
        jobs.append(Job(folder / f"{stem}.in", stem))
    return jobs


def run(out: Path, jobs: list[Job], torchrun: bool = False, **kw) -> tuple[dict, Upper, int]:
    out.mkdir(exist_ok=True)
    task = Upper(out)
    with open_batch(out, torchrun=torchrun, quiet=True, **kw) as batch:
        report = batch.run(task, jobs, {"command": "upper", "provenance": PROV})
        return report, task, batch.exit_code(report)


def test_a_rerun_skips_what_is_done_and_overwrite_redoes_it(tmp_path):
    jobs = inputs(tmp_path / "in", {"a": "x", "b": "y"})
    out = tmp_path / "out"
    report, task, code = run(out, jobs)
    assert code == 0 and task.made == ["a", "b"] and report["n_ok"] == 2
    (out / "b.txt").unlink()  # one output gone: only its job is made again
    report, task, code = run(out, jobs)
    assert task.made == ["b"] and [r["status"] for r in report["files"]] == [SKIPPED, "ok"]
    (out / "c.txt").write_text("not ours")  # a file this tool did not write is not done
    report, task, _ = run(out, [*jobs, *inputs(tmp_path / "in", {"c": "z"})])
    assert task.made == ["c"] and (out / "c.txt").read_text() == "Z"
    _, task, _ = run(out, jobs, overwrite=True)
    assert task.made == ["a", "b"]


def test_a_bad_job_is_reported_and_the_rest_are_written(tmp_path, capsys):
    jobs = inputs(tmp_path / "in", {"a": "x", "bad": "bad", "c": "z"})
    out = tmp_path / "out"
    out.mkdir()
    with open_batch(out, torchrun=False, quiet=True) as batch:
        batch.add_problems([("missing.png", "no such file or folder; check the path")])
        report = batch.run(Upper(out), jobs, {"provenance": PROV})
        assert batch.exit_code(report) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "skipped missing.png" in err[0] and "holds 'bad'" in err[1]
    assert sorted(p.name for p in out.glob("*.txt")) == ["a.txt", "c.txt"]
    assert (report["n_inputs"], report["n_ok"], report["n_failed"]) == (4, 2, 2)
    assert json.loads((out / "report.json").read_text())["files"][2]["status"] == "failed"


def test_report_csv_has_the_provenance_columns(tmp_path):
    out = tmp_path / "out"
    run(out, inputs(tmp_path / "in", {"a": "x"}))
    with (out / "report.csv").open() as fh:
        (row,) = list(csv.DictReader(fh))
    assert list(row)[:6] == Upper.columns
    assert row["fake_sha256"] == "ab" * 32 and row["seed"] == "7" and row["medrefine_version"]


def test_sigterm_mid_batch_leaves_no_partial_file_and_an_interrupted_report(tmp_path):
    jobs = inputs(tmp_path / "in", {"a": "x", "b": "stop", "c": "z"})
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run(out, jobs)
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "report.csv", "report.json"]
    report = json.loads((out / "report.json").read_text())
    assert report["interrupted"] is True and report["n_ok"] == 1 and report["n_not_started"] == 2
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back
    (tmp_path / "in" / "b.in").write_text("y")
    report, task, code = run(out, jobs)  # resumed where it stopped
    assert code == 0 and task.made == ["b", "c"]


def test_sigterm_once_interrupts_on_the_first_sigterm_only():
    """``once`` (the web server's stop): a second SIGTERM during the clean-up is ignored."""
    caught = 0
    with sigterm_as_interrupt(once=True):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        except KeyboardInterrupt:
            caught += 1
        os.kill(os.getpid(), signal.SIGTERM)  # ignored: no second interrupt
    assert caught == 1 and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    with pytest.raises(KeyboardInterrupt), sigterm_as_interrupt():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        except KeyboardInterrupt:
            pass
        os.kill(os.getpid(), signal.SIGTERM)  # without ``once``: every SIGTERM interrupts


def test_progress_callback_and_names(tmp_path):
    """The web app's way: no lock, its own progress, inputs named by their upload names."""
    jobs = [Job(j.source, j.stem, name=f"upload-{j.stem}") for j in
            inputs(tmp_path / "in", {"a": "x", "bad": "bad"})]  # fmt: skip
    seen = []
    batch = Batch(tmp_path, echo=seen.append, progress=lambda i, n, job: seen.append((i, n)))
    report = batch.run(Upper(tmp_path), jobs, {"provenance": {}})
    assert seen[:2] == [(0, 2), (1, 2)] and "upload-bad" in seen[2]
    assert report["files"][1]["error"] == "upload-bad: holds 'bad'; give good text"


WORKER = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_engine import inputs, run
report, task, code = run(Path({out!r}), inputs(Path({src!r}), {texts!r}), torchrun=True)
sys.exit(code)
"""


def test_two_torchrun_ranks_share_the_jobs(tmp_path, torchrun_env):
    texts = {f"j{i}": "bad" if i == 3 else "x" for i in range(5)}
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(Path(__file__).parent), out=str(tmp_path / "out"),
                                    src=str(tmp_path / "in"), texts=texts))  # fmt: skip
    (tmp_path / "out").mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(script)]  # fmt: skip
    done = subprocess.run(cmd, env=torchrun_env, capture_output=True, text=True, timeout=180)
    assert done.returncode != 0  # j3 failed: exit 2 on every rank
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert (report["n_inputs"], report["n_ok"], report["n_failed"]) == (5, 4, 1)
    ranks = {Path(r["input"]).stem: r["rank"] for r in report["files"]}
    assert ranks == {"j0": 0, "j1": 1, "j2": 0, "j3": 1, "j4": 0}  # rank r takes r, r+2, ...
    assert not list((tmp_path / "out").glob("report.rank*.json"))  # parts merged, removed
