"""``medrefine inpaint`` on many images (a folder, one mask each by stem, or ``--mask-from``)
through the batch engine: a bad mask fails alone (exit 2), a rerun skips what is done, SIGTERM
mid-batch leaves whole files and an interrupted report (``batch_behaviour``, tests/conftest.py);
two torchrun ranks share the images."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from inpaint_helpers import xray_like
from PIL import Image

from medrefine.cli import main


@pytest.fixture
def xrays(tmp_path):
    images, masks = tmp_path / "xrays", tmp_path / "holes"
    images.mkdir()
    masks.mkdir()
    rng = np.random.default_rng(0)
    for stem in ("a", "b", "c", "empty"):
        Image.fromarray(xray_like(rng, (48, 40))).save(images / f"{stem}.png")
        hole = np.zeros((48, 40), np.uint8)
        if stem != "empty":  # an empty mask is refused
            hole[16:28, 10:26] = 255
        Image.fromarray(hole).save(masks / f"{stem}.png")
    return images, masks


def _argv(images, masks, out, weights) -> list[str]:
    return ["inpaint", "--image", str(images), "--mask", str(masks), "-o", str(out),
            "--weights", str(weights), "--steps", "2", "--samples", "1",
            "--blend", "hard"]  # fmt: skip


def test_inpaint_batch_behaviour(xrays, tiny_inpaint_weights, tmp_path, batch_behaviour):
    out = tmp_path / "out"
    batch_behaviour(_argv(*xrays, out, tiny_inpaint_weights), out, good=3, bad="empty.png")
    assert {"a.png", "a_compare.png", "c.png"} <= {p.name for p in out.iterdir()}


def test_one_mask_for_many_images_is_refused(xrays, tiny_inpaint_weights, tmp_path, capsys):
    images, masks = xrays
    rc = main(_argv(images, masks / "a.png", tmp_path / "out", tiny_inpaint_weights))
    assert rc == 2 and "one mask for 4 images" in capsys.readouterr().err


def test_inpaint_under_torchrun_shares_the_images(xrays, tiny_inpaint_weights, tmp_path,
                                                  torchrun_env):  # fmt: skip
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "medrefine.cli", "-q", *_argv(*xrays, out, tiny_inpaint_weights)]  # fmt: skip
    run = subprocess.run(cmd, env=torchrun_env, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0, run.stderr[-3000:]  # empty.png failed: exit 2 on each rank
    report = json.loads((out / "report.json").read_text())
    assert report["world_size"] == 2 and (report["n_ok"], report["n_failed"]) == (3, 1)
    assert sorted(r["rank"] for r in report["files"]) == [0, 0, 1, 1]
