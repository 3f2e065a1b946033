"""``medrefine segment`` end to end with tiny seeded weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from medrefine.cli import main


def _weights_args(weights: dict[str, Path]) -> list[str]:
    return [
        "--weights",
        str(weights["coarse"]),
        "--refiner-weights",
        str(weights["refiner"]),
        "--device",
        "cpu",
    ]


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_segment_writes_binary_masks_of_input_size(
    tiny_weights, tiny_data, kvasir_image, tmp_path, capsys
):
    out = tmp_path / "out"
    code = main(
        [
            "segment",
            str(tiny_data / "images"),
            str(kvasir_image),
            "-o",
            str(out),
            "--format",
            "png,overlay,uncertainty",
            *_weights_args(tiny_weights),
        ]
    )
    assert code == 0, capsys.readouterr().err
    inputs = sorted((tiny_data / "images").glob("*.png")) + [kvasir_image]
    for image_path in inputs:
        size = Image.open(image_path).size
        mask = _png(out / f"{image_path.stem}.png")
        assert mask.shape == size[::-1]
        assert set(np.unique(mask).tolist()) <= {0, 255}
        assert _png(out / f"{image_path.stem}_overlay.png").shape == (*size[::-1], 3)
        assert _png(out / f"{image_path.stem}_uncertainty.png").shape == (*size[::-1], 3)
    report = json.loads((out / "report.json").read_text())
    assert report["n_ok"] == len(inputs) and report["n_failed"] == 0
    assert report["provenance"]["weights"]["refiner"]["sha256"]
    assert report["provenance"]["preset"] is None
    assert {"coarse", "refine", "write"} <= set(report["files"][0]["timings"])
    assert f"segmented {len(inputs)} of {len(inputs)}" in capsys.readouterr().out


def test_segment_skips_a_corrupt_file_and_exits_2(tiny_weights, tiny_data, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for stem in ("case0", "case1"):
        (folder / f"{stem}.png").write_bytes((tiny_data / "images" / f"{stem}.png").read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    (folder / "notes.txt").write_text("not an image, ignored in folders")
    out = tmp_path / "out"
    code = main(["segment", str(folder), "-o", str(out), *_weights_args(tiny_weights)])
    assert code == 2
    err_lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err_lines) == 1 and "broken.png" in err_lines[0]
    assert (out / "case0.png").is_file() and (out / "case1.png").is_file()
    assert not (out / "broken.png").exists()
    report = json.loads((out / "report.json").read_text())
    status = {Path(f["input"]).name: f["status"] for f in report["files"]}
    assert status == {"case0.png": "ok", "case1.png": "ok", "broken.png": "failed"}


def test_segment_no_refine_and_glob(tiny_weights, tiny_data, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(
        [
            "segment",
            str(tiny_data / "images" / "case[01].png"),
            "-o",
            str(out),
            "--weights",
            str(tiny_weights["coarse"]),
            "--no-refine",
            "--device",
            "cpu",
            "--keep-largest",
            "--fill-holes",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.glob("*.png")) == ["case0.png", "case1.png"]
    report = json.loads((out / "report.json").read_text())
    assert report["provenance"]["use_diffusion"] is False
    assert report["provenance"]["postprocess"]["keep_largest"] is True
    assert report["files"][0]["review_score"] is None


def test_segment_option_errors_exit_2(tiny_weights, tiny_data, tmp_path, capsys):
    image = str(tiny_data / "images" / "case0.png")
    coarse = str(tiny_weights["coarse"])
    code = main(["segment", image, "-o", str(tmp_path / "a"), "--weights", coarse])
    assert code == 2 and "--refiner-weights" in capsys.readouterr().err
    code = main(
        [
            "segment",
            image,
            "-o",
            str(tmp_path / "b"),
            "--weights",
            coarse,
            "--no-refine",
            "--format",
            "png,uncertainty",
        ]
    )
    assert code == 2 and "needs refinement" in capsys.readouterr().err
    code = main(
        [
            "segment",
            str(tmp_path / "missing.png"),
            image,
            "-o",
            str(tmp_path / "c"),
            "--weights",
            coarse,
            "--no-refine",
        ]
    )
    captured = capsys.readouterr()
    assert code == 2 and "missing.png" in captured.err
    assert (tmp_path / "c" / "case0.png").is_file()


def test_segment_refine_options_reach_the_pipeline(tiny_weights, tiny_data, tmp_path):
    out = tmp_path / "out"
    code = main(
        [
            "segment",
            str(tiny_data / "images" / "case0.png"),
            "-o",
            str(out),
            *_weights_args(tiny_weights),
            "--steps",
            "1",
            "--samples",
            "3",
            "--seed",
            "7",
            "--fusion",
            "vote",
            "--threshold",
            "0.4",
        ]
    )
    assert code == 0
    prov = json.loads((out / "report.json").read_text())["provenance"]
    assert prov["refine"]["steps"] == 1 and prov["refine"]["samples"] == 3
    assert prov["refine"]["seed"] == 7 and prov["refine"]["fusion"] == "vote"
    assert prov["refine"]["strength"] == 0.3  # unset: the refiner's default
    assert prov["postprocess"]["threshold"] == 0.4


def test_segment_with_several_coarse_weights_runs_their_ensemble(tiny_weights, tiny_data,
                                                                 tmp_path, capsys):
    import shutil

    second = tmp_path / "fold1.safetensors"
    shutil.copy(tiny_weights["coarse"], second)
    out = tmp_path / "out"
    code = main(["segment", str(tiny_data / "images"), "-o", str(out), "--no-refine",
                 "--weights", str(tiny_weights["coarse"]), str(second), "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    members = report["provenance"]["weights"]["coarse"]["ensemble"]
    assert [m["path"] for m in members] == [str(tiny_weights["coarse"]), str(second)]
    assert report["n_failed"] == 0
