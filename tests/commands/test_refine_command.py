"""``medrefine refine``: refine masks made elsewhere, one pair or two folders paired by stem."""

from __future__ import annotations

import json
import shutil

import numpy as np
from PIL import Image

from medrefine.cli import main


def test_refine_one_pair(tiny_weights, tiny_data, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(
        [
            "refine",
            "--image",
            str(tiny_data / "images" / "case0.png"),
            "--mask",
            str(tiny_data / "masks" / "case0.png"),
            "-o",
            str(out),
            "--weights",
            str(tiny_weights["refiner"]),
            "--device",
            "cpu",
            "--steps",
            "1",
            "--samples",
            "2",
            "--seed",
            "3",
        ]
    )
    assert code == 0, capsys.readouterr().err
    mask = np.asarray(Image.open(out / "case0.png"))
    assert mask.shape == (40, 48)
    assert set(np.unique(mask).tolist()) <= {0, 255}
    report = json.loads((out / "report.json").read_text())
    assert report["n_ok"] == 1
    assert "coarse" not in report["provenance"]["weights"]
    assert report["provenance"]["refine"]["seed"] == 3
    assert report["files"][0]["review_score"] is not None


def test_refine_folders_pair_by_stem(tiny_weights, tiny_data, tmp_path, capsys):
    images, masks = tmp_path / "images", tmp_path / "masks"
    shutil.copytree(tiny_data / "images", images)
    shutil.copytree(tiny_data / "masks", masks)
    (masks / "case5.png").unlink()  # case5 has no mask: reported, the rest still refined
    out = tmp_path / "out"
    code = main(
        [
            "refine",
            "--image",
            str(images),
            "--mask",
            str(masks),
            "-o",
            str(out),
            "--weights",
            str(tiny_weights["refiner"]),
            "--device",
            "cpu",
        ]
    )
    assert code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "case5" in err[0]
    assert sorted(p.name for p in out.glob("*.png")) == [f"case{i}.png" for i in range(5)]


def test_refine_mask_of_wrong_size_is_reported(tiny_weights, tiny_data, tmp_path, capsys):
    wrong = tmp_path / "wrong.png"
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(wrong)
    code = main(
        [
            "refine",
            "--image",
            str(tiny_data / "images" / "case0.png"),
            "--mask",
            str(wrong),
            "-o",
            str(tmp_path / "out"),
            "--weights",
            str(tiny_weights["refiner"]),
            "--device",
            "cpu",
        ]
    )
    assert code == 2
    assert "wrong.png" in capsys.readouterr().err
