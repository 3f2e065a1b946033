"""``medrefine inpaint`` writes every output with one file mode (the before | mask | after
panel was 0600, from ``mkstemp``, beside 0644 PNG and report) and never over its mask."""

from __future__ import annotations

import os
import stat

import numpy as np
from inpaint_helpers import xray_like
from PIL import Image

from medrefine.cli import main


def test_every_inpaint_output_gets_the_same_mode(tiny_inpaint_weights, tmp_path, capsys):
    image = xray_like(np.random.default_rng(0), (48, 40))
    hole = np.zeros(image.shape, np.uint8)
    hole[16:28, 10:26] = 255
    Image.fromarray(image).save(tmp_path / "cxr.png")
    Image.fromarray(hole).save(tmp_path / "hole.png")
    out = tmp_path / "out"
    old = os.umask(0o022)
    try:
        rc = main(["inpaint", "--image", str(tmp_path / "cxr.png"), "--mask",
                   str(tmp_path / "hole.png"), "-o", str(out), "--weights",
                   str(tiny_inpaint_weights), "--steps", "2", "--samples", "1", "--blend", "hard"])
    finally:
        os.umask(old)
    assert rc == 0, capsys.readouterr().err
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir() if p.is_file()}
    assert {"cxr.png", "cxr_compare.png", "report.json"} <= set(modes)
    assert set(modes.values()) == {0o644}, modes


def test_a_mask_in_out_named_like_the_image_is_kept(tiny_inpaint_weights, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    image = xray_like(np.random.default_rng(1), (48, 40))
    hole = np.zeros(image.shape, np.uint8)
    hole[16:28, 10:26] = 255
    Image.fromarray(image).save(tmp_path / "cxr.png")
    Image.fromarray(hole).save(out / "cxr_compare.png")  # would be the before | after panel
    before = (out / "cxr_compare.png").read_bytes()
    rc = main(["inpaint", "--image", str(tmp_path / "cxr.png"), "--mask",
               str(out / "cxr_compare.png"), "-o", str(out), "--weights",
               str(tiny_inpaint_weights)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "cxr_compare.png" in lines[0]
    assert (out / "cxr_compare.png").read_bytes() == before
    assert not (out / "cxr.png").exists()
