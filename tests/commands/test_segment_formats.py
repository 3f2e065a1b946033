"""``medrefine segment --format``: PNG/overlay/JSON on a real photo, NIfTI volumes in the input's
geometry, DICOM-SEG that highdicom (and dciodvfy, when installed) accepts."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medrefine.cli import main
from medrefine.io import read_image

MNI = "mni152_nifti/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
CT_SMALL = "dicom_samples/CT_small.dcm"
ENHANCED_CT = "dicom_samples/eCT_Supplemental.dcm"  # multi-frame: 2 frames, stored in reverse


def weights_args(weights: dict[str, Path], refine: bool = True) -> list[str]:
    args = ["--weights", str(weights["coarse"]), "--device", "cpu"]
    return (
        [*args, "--refiner-weights", str(weights["refiner"])] if refine else [*args, "--no-refine"]
    )


def real_file(data_dir: Path, relative: str) -> Path:
    path = data_dir / relative
    if not path.exists():
        pytest.skip(f"{path} is not in the data folder")
    return path


def test_kvasir_png_overlay_json(tiny_weights, kvasir_image, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(
        ["segment", str(kvasir_image), "-o", str(out), "--format", "png,overlay,json"]
        + weights_args(tiny_weights)
    )
    assert code == 0, capsys.readouterr().err
    stem = kvasir_image.stem
    width, height = Image.open(kvasir_image).size
    mask = np.asarray(Image.open(out / f"{stem}.png"))
    assert mask.shape == (height, width) and set(np.unique(mask).tolist()) <= {0, 255}
    assert np.asarray(Image.open(out / f"{stem}_overlay.png")).shape == (height, width, 3)
    summary = json.loads((out / f"{stem}.json").read_text())
    assert summary["shape"] == [height, width]
    assert summary["foreground_pixels"] == int((mask > 0).sum())
    assert summary["spacing_mm"] is None and summary["foreground_area_mm2"] is None
    assert {"coarse", "refine", "postprocess"} <= set(summary["timings"])
    assert summary["params"]["refine"]["seed"] == 0
    assert summary["weights"]["coarse"] and summary["review_score"] is not None
    report = json.loads((out / "report.json").read_text())
    assert report["files"][0]["outputs"] == [f"{stem}.png", f"{stem}_overlay.png", f"{stem}.json"]
    prov = report["provenance"]
    assert prov["medrefine_version"] and prov["seed"] == 0
    assert prov["arguments"]["format"] == "png,overlay,json"
    csv_lines = (out / "report.csv").read_text().splitlines()
    assert csv_lines[0].startswith("input,status,outputs,seconds,error")
    assert len(csv_lines) == 2 and ",ok," in csv_lines[1]
    assert prov["weights"]["coarse"]["sha256"] in csv_lines[1]


def test_mni_volume_nifti_keeps_affine_and_shape(tiny_weights, data_dir, tmp_path, capsys):
    source = real_file(data_dir, MNI)
    out = tmp_path / "out"
    code = main(
        ["segment", str(source), "-o", str(out), "--format", "nifti,uncertainty,json"]
        + weights_args(tiny_weights)
    )
    assert code == 0, capsys.readouterr().err
    src = nib.load(source)
    for name, dtype in (
        ("mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz", np.uint8),
        ("mni_icbm152_t1_tal_nlin_sym_09a_converted_uncertainty.nii.gz", np.float32),
    ):
        written = nib.load(out / name)
        assert written.shape == src.shape
        np.testing.assert_allclose(written.affine, src.affine)
        assert written.get_data_dtype() == dtype
    mask = np.asarray(nib.load(out / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz").dataobj)
    summary = json.loads((out / "mni_icbm152_t1_tal_nlin_sym_09a_converted.json").read_text())
    assert summary["shape"] == list(read_image(source).spatial_shape)
    assert summary["foreground_pixels"] == int((mask > 0).sum())
    assert summary["foreground_volume_mm3"] == pytest.approx(summary["foreground_pixels"])  # 1 mm


def test_volume_refuses_png_and_2d_nifti_gets_2d_nifti(
    tiny_weights, data_dir, kvasir_image, tmp_path, capsys
):
    source = real_file(data_dir, MNI)
    out = tmp_path / "out"
    code = main(
        ["segment", str(source), str(kvasir_image), "-o", str(out), "--format", "png,nifti"]
        + weights_args(tiny_weights, refine=False)
    )
    assert code == 2
    assert "is a volume" in capsys.readouterr().err
    written = nib.load(out / f"{kvasir_image.stem}.nii.gz")
    width, height = Image.open(kvasir_image).size
    assert written.shape == (width, height)  # NIfTI voxel order (i = column, j = row)
    png = np.asarray(Image.open(out / f"{kvasir_image.stem}.png")) > 0
    np.testing.assert_array_equal(np.asarray(written.dataobj).T > 0, png)


def dciodvfy_errors(path: Path) -> list[str]:
    if shutil.which("dciodvfy") is None:
        pytest.skip(
            "dciodvfy (Debian package dicom3tools) is not installed: "
            "apt-get install -y dicom3tools to validate DICOM-SEG outputs"
        )
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


@pytest.mark.parametrize("relative", [CT_SMALL, ENHANCED_CT])
def test_dicom_seg_references_its_source(tiny_weights, data_dir, tmp_path, relative, capsys):
    source = real_file(data_dir, relative)
    out = tmp_path / "out"
    code = main(
        ["segment", str(source), "-o", str(out), "--format", "dicom-seg,nifti,json"]
        + weights_args(tiny_weights, refine=False)
    )
    assert code == 0, capsys.readouterr().err
    seg_path = out / f"{source.stem}.dcm"
    image = read_image(source)
    seg = hd.seg.segread(seg_path)
    assert str(seg.Modality) == "SEG"
    referenced = {uid[2] for uid in seg.get_source_image_uids()}
    assert referenced == set(image.meta["sop_instance_uids"])
    assert int(seg.NumberOfFrames) == image.meta["number_of_frames"]
    nifti_mask = json.loads((out / f"{source.stem}.json").read_text())
    assert nifti_mask["spacing_mm"] == pytest.approx(list(image.spacing))
    key = "foreground_volume_mm3" if image.is_volume else "foreground_area_mm2"
    assert nifti_mask[key] == pytest.approx(
        nifti_mask["foreground_pixels"] * float(np.prod(image.spacing))
    )
    assert dciodvfy_errors(seg_path) == []


def test_dicom_seg_for_a_photo_fails_that_file_only(
    tiny_weights, data_dir, kvasir_image, tmp_path, capsys
):
    source = real_file(data_dir, CT_SMALL)
    out = tmp_path / "out"
    code = main(
        ["segment", str(source), str(kvasir_image), "-o", str(out), "--format", "dicom-seg"]
        + weights_args(tiny_weights, refine=False)
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "needs a DICOM input" in err and kvasir_image.name in err
    assert (out / "CT_small.dcm").is_file() and not (out / f"{kvasir_image.stem}.dcm").exists()
    status = {
        Path(f["input"]).name: f["status"]
        for f in json.loads((out / "report.json").read_text())["files"]
    }
    assert status == {"CT_small.dcm": "ok", kvasir_image.name: "failed"}
