"""Every entry of a folder or glob is segmented or listed in report.json with why (issue 15):
symlink loops, folders named like images, FIFOs, unreadable files; a mixed DICOM + NIfTI batch
asked for DICOM-SEG writes it where it can."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medrefine.batch.inputs import expand_inputs
from medrefine.cli import main


@pytest.fixture
def hostile_folder(tmp_path: Path) -> Path:
    """Two good PNGs, a symlink loop, a folder named x.png, a FIFO, a broken link, notes."""
    folder = tmp_path / "batch"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / name)
    (folder / "loop.png").symlink_to("loop.png")
    (folder / "x.png").mkdir()
    os.mkfifo(folder / "pipe.png")
    (folder / "gone.png").symlink_to(tmp_path / "missing.png")
    (folder / "notes.txt").write_text("not an image")
    if os.geteuid() != 0:  # root reads anything: then only the FIFO stands for "unreadable"
        locked = folder / "locked.png"
        shutil.copy(folder / "a.png", locked)
        locked.chmod(0)
    return folder


def _run(tiny_weights, specs: list[str], out: Path, *extra: str) -> tuple[int, dict]:
    code = main(
        ["segment", *specs, "-o", str(out), "--weights", str(tiny_weights["coarse"])]
        + ["--no-refine", *extra]
    )
    return code, json.loads((out / "report.json").read_text())


@pytest.mark.parametrize("mode", ["folder", "glob"])
def test_every_bad_entry_is_reported_and_the_good_ones_written(
    tiny_weights, hostile_folder, tmp_path, capsys, mode
):
    spec = str(hostile_folder) if mode == "folder" else str(hostile_folder / "*")
    code, report = _run(tiny_weights, [spec], tmp_path / f"out_{mode}")
    assert code == 2
    assert "Traceback" not in capsys.readouterr().err
    status = {Path(r["input"]).name: (r["status"], r.get("error", "")) for r in report["files"]}
    assert status["a.png"][0] == status["b.png"][0] == "ok"
    assert (tmp_path / f"out_{mode}" / "a.png").is_file()
    assert "symlink loop" in status["loop.png"][1]
    assert "is a folder" in status["x.png"][1]
    assert "not a regular file" in status["pipe.png"][1]
    assert "broken symlink" in status["gone.png"][1]
    if os.geteuid() != 0:
        assert "permission" in status["locked.png"][1]
    assert report["n_failed"] == len(status) - 2
    ignored = {Path(e["input"]).name: e["why"] for e in report["ignored"]}
    assert "not a supported image" in ignored["notes.txt"]


def test_expand_inputs_never_raises_on_a_loop_named_directly(tmp_path):
    loop = tmp_path / "loop.png"
    loop.symlink_to(loop)
    inputs, problems = expand_inputs([str(loop), str(tmp_path / "*.png")])
    assert (
        inputs == []
        and [why for _, why in problems]
        == ["symlink loop (the link points back to itself); remove or fix the link"] * 2
    )


def test_mixed_batch_writes_dicom_seg_where_the_input_is_dicom(tiny_weights, data_dir, tmp_path):
    ct = data_dir / "dicom_samples" / "CT_small.dcm"
    if not ct.is_file():
        pytest.skip(f"{ct} not found")
    folder = tmp_path / "study"
    folder.mkdir()
    shutil.copy(ct, folder / "ct.dcm")
    volume = np.random.default_rng(0).normal(100, 20, (24, 20, 3)).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), folder / "mri.nii.gz")
    out = tmp_path / "out"
    code, report = _run(tiny_weights, [str(folder)], out, "--format", "nifti,dicom-seg,json")
    assert code == 0
    files = {Path(r["input"]).name: r for r in report["files"]}
    assert files["ct.dcm"]["outputs"] == ["ct.nii.gz", "ct.dcm", "ct.json"]
    assert files["mri.nii.gz"]["outputs"] == ["mri.nii.gz", "mri.json"]
    assert "needs a DICOM input" in files["mri.nii.gz"]["skipped_formats"]["dicom-seg"]
    assert "skipped_formats" not in files["ct.dcm"]
    # A rerun finds both done (the NIfTI input owes no .dcm).
    code, again = _run(tiny_weights, [str(folder)], out, "--format", "nifti,dicom-seg,json")
    assert code == 0 and again["n_skipped"] == 2
    # DICOM-SEG alone still refuses the NIfTI input, with the reason.
    code, alone = _run(tiny_weights, [str(folder)], tmp_path / "alone", "--format", "dicom-seg")
    errors = {Path(r["input"]).name: r.get("error", "") for r in alone["files"]}
    assert code == 2 and "needs a DICOM input" in errors["mri.nii.gz"]
