"""The batch engine's behaviour through ``segment`` and ``refine`` (``batch_behaviour`` in
tests/conftest.py): a bad entry fails alone (exit 2) with report.csv's provenance columns, a
rerun skips what is done, SIGTERM mid-batch leaves whole files and an interrupted report;
``refine`` under torchrun shares its pairs (``segment``'s: test_segment_batches.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def _folders(tiny_data: Path, tmp_path: Path) -> tuple[Path, Path]:
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for stem in ("case0", "case1", "case2"):
        shutil.copy(tiny_data / "images" / f"{stem}.png", images)
        shutil.copy(tiny_data / "masks" / f"{stem}.png", masks)
    return images, masks


def test_segment_batch_behaviour(tiny_weights, tiny_data, tmp_path, batch_behaviour):
    images, _ = _folders(tiny_data, tmp_path)
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    out = tmp_path / "out"
    argv = ["segment", str(images), "-o", str(out), "--format", "png,json", "--weights",
            str(tiny_weights["coarse"]), "--no-refine", "--device", "cpu"]  # fmt: skip
    batch_behaviour(argv, out, good=3, bad="broken.png")


def _refine_argv(images: Path, masks: Path, out: Path, weights: dict[str, Path]) -> list[str]:
    return ["refine", "--image", str(images), "--mask", str(masks), "-o", str(out), "--weights",
            str(weights["refiner"]), "--device", "cpu", "--steps", "1",
            "--samples", "1"]  # fmt: skip


def test_refine_batch_behaviour(tiny_weights, tiny_data, tmp_path, batch_behaviour):
    images, masks = _folders(tiny_data, tmp_path)
    shutil.copy(images / "case0.png", images / "empty.png")
    Image.fromarray(np.zeros((40, 48), np.uint8)).save(masks / "empty.png")  # refused
    out = tmp_path / "out"
    batch_behaviour(_refine_argv(images, masks, out, tiny_weights), out, good=3, bad="empty.png")


def test_refine_under_torchrun_shares_the_pairs(tiny_weights, tiny_data, tmp_path, torchrun_env):
    images, masks = _folders(tiny_data, tmp_path)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "medrefine.cli", "-q",
           *_refine_argv(images, masks, out, tiny_weights)]  # fmt: skip
    run = subprocess.run(cmd, env=torchrun_env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["world_size"] == 2 and report["n_ok"] == 3
    assert sorted(r["rank"] for r in report["files"]) == [0, 0, 1]
    assert sorted(p.name for p in out.glob("*.png")) == ["case0.png", "case1.png", "case2.png"]
