"""Run folders: metrics log, truncation on resume, the LR schedule, resume state."""

from __future__ import annotations

import json

import pytest
import torch

from medrefine.training.distributed import DistInfo, all_reduce_sum, init_distributed
from medrefine.training.runlog import RunLog, load_resume_state, save_resume_state, warmup_cosine


def test_log_and_truncate(tmp_path):
    run = RunLog(tmp_path / "run")
    run.write_config({"a": 1, "path": tmp_path})  # non-JSON values are stringified
    assert json.loads((tmp_path / "run" / "config.json").read_text())["path"] == str(tmp_path)
    for epoch in (1, 2, 3):
        run.log(
            {"epoch": epoch, "train_loss": 1.0 / epoch, "val_dice": 0.1 * epoch},
            ("train_loss", "val_dice"),
        )
    assert (tmp_path / "run" / "training_curve.png").is_file()
    again = RunLog(tmp_path / "run")  # a new process sees the history
    assert [r["epoch"] for r in again.history] == [1, 2, 3]
    again.truncate(2)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]


def test_disabled_runlog_writes_nothing(tmp_path):
    run = RunLog(tmp_path / "rank1", enabled=False)
    run.write_config({"a": 1})
    run.log({"epoch": 1}, ("train_loss",))
    assert not (tmp_path / "rank1").exists()
    assert run.history == [{"epoch": 1}]


def test_warmup_cosine():
    total, warmup = 100, 10
    values = [warmup_cosine(s, total, warmup) for s in range(total + 1)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert values[10] == pytest.approx(1.0)
    assert values[-1] == pytest.approx(0.01)
    assert all(a >= b for a, b in zip(values[10:], values[11:], strict=False))
    assert min(values) > 0


def test_resume_state_round_trip(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    path = tmp_path / "resume.pt"
    save_resume_state(
        path, {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 4, "best": 0.5}
    )
    state = load_resume_state(path)
    assert state["epoch"] == 4 and state["best"] == 0.5
    assert torch.equal(state["model"]["weight"], model.weight)
    opt2 = torch.optim.AdamW(model.parameters())
    opt2.load_state_dict(state["optimizer"])
    assert [p.name for p in tmp_path.iterdir()] == ["resume.pt"]


def test_single_process_distributed_helpers(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = init_distributed(torch.device("cpu"))
    assert info == DistInfo() and info.is_main and not info.enabled
    assert all_reduce_sum([1.5, 2.0], info) == [1.5, 2.0]


def test_run_files_get_the_umask_mode_like_every_output(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        run = RunLog(tmp_path / "run")
        run.write_config({"a": 1})
        run.log({"epoch": 1, "train_loss": 1.0}, curve_keys=("train_loss",))
        save_resume_state(tmp_path / "run" / "resume.pt", {"step": torch.tensor(1)})
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "run").iterdir()}
    assert {"config.json", "resume.pt"} <= set(modes)
    assert set(modes.values()) == {0o644}, modes  # mkstemp made config and resume 0600
