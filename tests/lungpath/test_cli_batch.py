"""``medrefine lung-pathology`` through the batch engine, on three real 8-bit CT slices in rank
mode with their lung masks (fast, the shipped weights): a slice without its lung mask fails
alone (exit 2), a rerun skips what is done, SIGTERM mid-batch leaves whole files and an
interrupted report (``batch_behaviour``, tests/conftest.py); two torchrun ranks share them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest


@pytest.fixture
def slices(tmp_path, data_root):
    source = data_root / "covid_ct_lung_infection_ma"
    images = tmp_path / "slices"
    images.mkdir()
    for stem in ("s0720", "s0000", "s0002", "s0004"):
        shutil.copy(source / "images" / f"{stem}.jpg", images)
    masks = tmp_path / "lungs"
    masks.mkdir()
    for stem in ("s0720", "s0002", "s0004"):  # s0000 has none: it fails
        shutil.copy(source / "masks_lung" / f"{stem}.png", masks)
    return images, masks


def _argv(images, masks, out) -> list[str]:
    return ["lung-pathology", str(images), "-o", str(out), "--intensity", "rank",
            "--lung-masks", str(masks), "--format", "png,json"]  # fmt: skip


def test_lung_pathology_batch_behaviour(slices, tmp_path, batch_behaviour):
    out = tmp_path / "out"
    batch_behaviour(_argv(*slices, out), out, good=3, bad="s0000.jpg")


def test_lung_pathology_under_torchrun_shares_the_slices(slices, tmp_path, torchrun_env):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "medrefine.cli", "-q", *_argv(*slices, out)]  # fmt: skip
    run = subprocess.run(cmd, env=torchrun_env, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0, run.stderr[-3000:]  # s0000 failed: exit 2 on each rank
    report = json.loads((out / "report.json").read_text())
    assert report["world_size"] == 2 and (report["n_ok"], report["n_failed"]) == (3, 1)
    assert sorted(r["rank"] for r in report["files"]) == [0, 0, 1, 1]
