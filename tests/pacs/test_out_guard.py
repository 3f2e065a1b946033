"""``segment --dicomweb`` and ``listen`` hold OUT's lock like the file commands, and a pulled
series is ``skipped (done)`` only when medrefine wrote its outputs (report.json says so)."""

from __future__ import annotations

import fcntl
import json

from orthanc_server import SAMPLES, uid_of

from medrefine.batch.guard import LOCK_NAME
from medrefine.cli import main


def _tiny(tiny_weights) -> list[str]:
    return ["--weights", str(tiny_weights["coarse"]), "--no-refine", "--device", "cpu"]


def test_pull_into_a_held_out_is_refused(orthanc, credentials, tiny_weights, data_dir, tmp_path,
                                         capsys):  # fmt: skip
    study = uid_of(data_dir / SAMPLES / "CT_small.dcm", "StudyInstanceUID")
    out = tmp_path / "out"
    out.mkdir()
    args = ["segment", "--dicomweb", orthanc.dicomweb, "--study", study, "-o", str(out)]
    with open(out / LOCK_NAME, "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main(args + _tiny(tiny_weights)) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "another medrefine run" in lines[0] and str(out) in lines[0]
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]


def test_a_pulled_series_is_done_only_when_medrefine_wrote_it(
    orthanc, credentials, tiny_weights, data_dir, tmp_path, capsys
):
    source = data_dir / SAMPLES / "CT_small.dcm"
    study, series = uid_of(source, "StudyInstanceUID"), uid_of(source, "SeriesInstanceUID")
    out = tmp_path / "out"
    out.mkdir()
    for name in (f"{series}.dcm", f"{series}.json"):  # someone else's files, named alike
        (out / name).write_text("not medrefine's\n")
    args = ["segment", "--dicomweb", orthanc.dicomweb, "--study", study, "--series", series]
    args += ["-o", str(out), *_tiny(tiny_weights)]
    assert main(args) == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert [f["status"] for f in report["files"]] == ["ok"]
    assert report["written"] == {f"{series}.dcm": series, f"{series}.json": series}
    assert (out / f"{series}.dcm").read_bytes()[128:132] == b"DICM"
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert [f["status"] for f in report["files"]] == ["skipped (done)"]


def test_a_second_listener_on_the_same_out_is_refused(tiny_weights, tmp_path, capsys):
    from orthanc_server import free_port

    out = tmp_path / "out"
    out.mkdir()
    args = ["listen", "-o", str(out), "--port", str(free_port()), "--bind", "127.0.0.1"]
    with open(out / LOCK_NAME, "a+") as held:  # the first listener
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main(args + _tiny(tiny_weights)) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "another medrefine run" in lines[0]
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]
