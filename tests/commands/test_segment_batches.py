"""Batches that keep their work: resume, interruption, torchrun sharding, seeded repeats."""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medrefine.cli import main
from medrefine.io import atomic_output

FORMATS = "png,overlay,uncertainty,json"


def weights_args(weights: dict[str, Path]) -> list[str]:
    return [
        "--weights",
        str(weights["coarse"]),
        "--refiner-weights",
        str(weights["refiner"]),
        "--device",
        "cpu",
    ]


@pytest.fixture
def folder(tiny_data: Path, tmp_path: Path) -> Path:
    """Three good PNGs and a corrupt one."""
    folder = tmp_path / "in"
    folder.mkdir()
    for stem in ("case0", "case1", "case2"):
        (folder / f"{stem}.png").write_bytes((tiny_data / "images" / f"{stem}.png").read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    return folder


def stamps(out: Path) -> dict[str, tuple[int, bytes]]:
    """Output file -> (mtime_ns, content), reports left out."""
    return {
        p.name: (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(out.iterdir())
        if not p.name.startswith("report.")
    }


def statuses(out: Path) -> dict[str, str]:
    report = json.loads((out / "report.json").read_text())
    return {Path(f["input"]).name: f["status"] for f in report["files"]}


def test_corrupt_file_in_a_folder_is_reported_in_json_and_csv(tiny_weights, folder, tmp_path):
    out = tmp_path / "out"
    assert (
        main(
            [
                "segment",
                str(folder),
                "-o",
                str(out),
                "--format",
                FORMATS,
                *weights_args(tiny_weights),
            ]
        )
        == 2
    )
    assert statuses(out) == {
        "broken.png": "failed",
        "case0.png": "ok",
        "case1.png": "ok",
        "case2.png": "ok",
    }
    with (out / "report.csv").open() as fh:
        rows = {Path(r["input"]).name: r for r in csv.DictReader(fh)}
    assert rows["broken.png"]["status"] == "failed" and "broken.png" in rows["broken.png"]["error"]
    assert rows["case0.png"]["outputs"].split(";") == [
        "case0.png",
        "case0_overlay.png",
        "case0_uncertainty.png",
        "case0.json",
    ]
    assert float(rows["case1.png"]["seconds"]) > 0 and rows["case1.png"]["seed"] == "0"
    assert not [p for p in out.iterdir() if ".tmp" in p.name]


def test_rerun_skips_finished_inputs_and_overwrite_redoes_them(
    tiny_weights, folder, tmp_path, capsys, caplog
):
    out = tmp_path / "out"
    args = [
        "segment",
        str(folder),
        "-o",
        str(out),
        "--format",
        FORMATS,
        *weights_args(tiny_weights),
    ]
    assert main(args) == 2
    before = stamps(out)
    assert len(before) == 12  # 3 good inputs x 4 outputs
    capsys.readouterr()
    assert main(args) == 2  # the corrupt file is tried (and reported) again
    assert stamps(out) == before  # nothing rewritten: same bytes, same mtimes
    assert statuses(out) == {
        "broken.png": "failed",
        "case0.png": "skipped (done)",
        "case1.png": "skipped (done)",
        "case2.png": "skipped (done)",
    }
    assert "3 already done (skipped)" in capsys.readouterr().out
    with caplog.at_level(logging.WARNING, logger="medrefine.commands.segment"):
        main([*args, "--seed", "3"])  # other settings: kept, with a warning
    assert "other refinement" in caplog.text and "--overwrite" in caplog.text
    assert stamps(out) == before
    (out / "case1_overlay.png").unlink()  # one output missing: only that input is redone
    main(args)
    assert statuses(out)["case1.png"] == "ok" and statuses(out)["case0.png"] == "skipped (done)"
    main([*args, "--overwrite"])
    assert set(statuses(out).values()) == {"ok", "failed"}
    assert stamps(out)["case0.png"][0] != before["case0.png"][0]


def test_interrupt_leaves_whole_files_and_a_report(tiny_weights, folder, tmp_path, monkeypatch):
    import medrefine.io.formats as formats  # the pictures are written through the table

    (folder / "broken.png").unlink()
    out = tmp_path / "out"
    args = [
        "segment",
        str(folder),
        "-o",
        str(out),
        "--format",
        FORMATS,
        *weights_args(tiny_weights),
    ]
    real_write = formats.write_image_png
    calls = []

    def write_then_interrupt(image, path):
        calls.append(path)
        if len(calls) == 3:  # case1's overlay: Ctrl-C half way through writing it
            with atomic_output(path) as tmp:
                tmp.write_bytes(b"\x89PNG half a file")
                raise KeyboardInterrupt
        return real_write(image, path)

    monkeypatch.setattr(formats, "write_image_png", write_then_interrupt)
    assert main(args) == 130
    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if ".tmp" in n]  # no half-written file anywhere
    assert "case1_overlay.png" not in names and "case1.png" in names
    report = json.loads((out / "report.json").read_text())
    assert report["interrupted"] is True and report["n_ok"] == 1
    assert report["n_not_started"] == 2 and (out / "report.csv").is_file()
    monkeypatch.setattr(formats, "write_image_png", real_write)
    assert main(args) == 0  # resumed: case0 skipped, case1 redone, case2 done
    assert statuses(out) == {"case0.png": "skipped (done)", "case1.png": "ok", "case2.png": "ok"}
    assert np.asarray(Image.open(out / "case1_overlay.png")).shape[-1] == 3


def test_torchrun_two_ranks_share_the_inputs(tiny_weights, folder, tmp_path):
    (folder / "broken.png").unlink()
    for stem in ("case3", "case4"):
        (folder / f"{stem}.png").write_bytes((folder / "case0.png").read_bytes())
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "medrefine.cli",
        "-q",
        "segment",
        str(folder),
        "-o",
        str(out),
        "--format",
        "png,json",
        *weights_args(tiny_weights),
    ]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    stems = [f"case{i}" for i in range(5)]
    assert sorted(p.name for p in out.glob("*.png")) == sorted(f"{s}.png" for s in stems)
    report = json.loads((out / "report.json").read_text())
    assert report["world_size"] == 2 and report["n_ok"] == 5
    assert [Path(f["input"]).stem for f in report["files"]] == stems  # merged in input order
    ranks = {Path(f["input"]).stem: f["rank"] for f in report["files"]}
    assert ranks == {"case0": 0, "case1": 1, "case2": 0, "case3": 1, "case4": 0}  # sorted, r::2
    assert len((out / "report.csv").read_text().splitlines()) == 6
    assert not list(out.glob("report.rank*.json"))  # merged, then removed


def test_same_seed_gives_bit_identical_masks(tiny_weights, tiny_data, data_dir, tmp_path):
    volume = data_dir / "dicom_samples" / "eCT_Supplemental.dcm"
    if not volume.exists():
        pytest.skip(f"{volume} is not in the data folder")
    inputs = [
        str(tiny_data / "images" / "case0.png"),
        str(tiny_data / "images" / "case1.png"),
        str(volume),
    ]

    def segment(out: Path, *extra: str) -> dict[str, np.ndarray]:
        code = main(
            [
                "segment",
                *inputs,
                "-o",
                str(out),
                "--format",
                "nifti,uncertainty",
                "--samples",
                "2",
                *weights_args(tiny_weights),
                *extra,
            ]
        )
        assert code == 0
        arrays = {p.name: np.asarray(nib.load(p).dataobj) for p in out.glob("*.nii.gz")}
        return arrays | {p.name: np.asarray(Image.open(p)) for p in out.glob("*.png")}

    first, second = segment(tmp_path / "a"), segment(tmp_path / "b")
    assert sorted(first) == sorted(second) and len(first) == 6  # 3 masks, 3 uncertainty maps
    for name, array in first.items():
        assert array.dtype == second[name].dtype
        assert array.tobytes() == second[name].tobytes(), name
    other = segment(tmp_path / "c", "--seed", "5")
    key = "eCT_Supplemental_uncertainty.nii.gz"
    assert other[key].tobytes() != first[key].tobytes()  # the seed is what repeats them
