"""``medrefine lung-pathology`` end to end on real CT (ct_hu_samples) with the shipped weights:
outputs in the input's geometry, DICOM-SEG through dciodvfy, bad inputs, resume, rank mode."""

from __future__ import annotations

import json
import shutil
import subprocess

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medrefine.cli import main
from medrefine.lungpath.labels import CLASS_NAMES


def _run(args, capsys):
    code = main(["lung-pathology", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def pelvis_ct(tmp_path_factory, ct_hu):
    """A real CT volume with no lung: the lower 30 slices of example_ct."""
    img = nib.load(ct_hu / "example_ct.nii.gz")
    data = np.asarray(img.dataobj)
    path = tmp_path_factory.mktemp("nolung") / "pelvis.nii.gz"
    nib.save(nib.Nifti1Image(data[:, :, :30], img.affine), path)  # k runs inferior -> superior
    return path


def _dciodvfy_errors(path) -> list[str]:
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy is not installed")
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return [line for line in (out.stdout + out.stderr).splitlines() if "Error" in line]


def test_batch_on_real_ct_with_bad_inputs(tmp_path, capsys, ct_hu, data_root, pelvis_ct):
    out = tmp_path / "out"
    png = data_root / "medseg_covid_ct_infnet" / "images" / "medseg_005.jpg"
    mr = data_root / "dicom_samples" / "MR_small.dcm"
    inputs = [ct_hu / "example_ct_sm.nii.gz", png, mr, pelvis_ct]
    args = [*inputs, "-o", out, "--format", "nifti,dicom-seg,overlay,json"]
    code, stdout, stderr = _run(args, capsys)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len([x for x in lines if x.startswith("medrefine: skipped")]) == 3
    assert any("medseg_005.jpg" in x and "8-bit picture" in x for x in lines)
    assert any("MR_small.dcm" in x and "not CT" in x for x in lines)
    assert any("pelvis.nii.gz" in x and "no lung found" in x for x in lines)
    report = json.loads((out / "report.json").read_text())
    assert (report["n_ok"], report["n_failed"]) == (1, 3)
    # the label map: the input's shape and affine, values 0..5, lung where the HU mask is
    src = nib.load(ct_hu / "example_ct_sm.nii.gz")
    lab = nib.load(out / "example_ct_sm.nii.gz")
    assert lab.shape == src.shape
    np.testing.assert_allclose(lab.affine, src.affine, atol=1e-4)
    labels = np.asarray(lab.dataobj)
    assert set(np.unique(labels)) <= set(range(6)) and (labels > 0).sum() > 3000
    ref = np.asarray(nib.load(ct_hu / "example_ct_sm_lung_lobes.nii.gz").dataobj) > 0
    overlap = 2 * ((labels > 0) & ref).sum() / ((labels > 0).sum() + ref.sum())
    assert overlap > 0.9
    summary = json.loads((out / "example_ct_sm.json").read_text())
    classes = summary["classes"]
    assert list(classes) == list(CLASS_NAMES)
    assert sum(c["fraction_of_lung"] for c in classes.values()) == pytest.approx(1.0)
    voxel_ml = 27 / 1000  # 3 mm isotropic
    for name, c in classes.items():
        assert c["voxels"] == int((labels == CLASS_NAMES.index(name) + 1).sum())
        assert c["ml"] == pytest.approx(c["voxels"] * voxel_ml)
    assert (out / "example_ct_sm_overlay.png").is_file()
    assert not (out / "example_ct_sm.dcm").exists()  # DICOM-SEG needs a DICOM input
    # resume: the good input is skipped, the bad ones reported again
    code, _, stderr = _run(args, capsys)
    report = json.loads((out / "report.json").read_text())
    assert code == 2 and report["n_skipped"] == 1 and report["n_failed"] == 3


def test_dicom_series_gives_a_valid_dicom_seg(tmp_path, capsys, ct_hu):
    code, _, stderr = _run(
        [ct_hu / "dicom_series", "-o", tmp_path, "--format", "nifti,dicom-seg,json"], capsys
    )
    assert code == 0, stderr
    from medrefine.io import read_image
    from medrefine.io.dicom_seg import read_dicom_seg

    series = read_image(ct_hu / "dicom_series")
    seg = read_dicom_seg(tmp_path / "dicom_series.dcm", like=series)
    assert sorted(seg.meta["segment_labels"]) == [1, 2, 3, 4, 5]  # one segment per class
    assert "Emphysema" in seg.meta["segment_labels"].values()
    labels = np.asarray(nib.load(tmp_path / "dicom_series.nii.gz").dataobj)
    assert seg.mask.shape == series.spatial_shape
    assert int((seg.mask > 0).sum()) == int((labels > 0).sum()) > 0
    assert _dciodvfy_errors(tmp_path / "dicom_series.dcm") == []
    # a sliver of lung base (0.9 mL): reported, and said to be partial everywhere it goes
    summary = json.loads((tmp_path / "dicom_series.json").read_text())
    assert summary["partial_coverage"] is True
    assert "mL of lung, under the 1000 mL" in summary["coverage"]["reasons"][0]
    description = pydicom.dcmread(tmp_path / "dicom_series.dcm").SeriesDescription
    assert "partial lung coverage" in description
    warnings = [line for line in stderr.splitlines() if "partial lung coverage" in line]
    assert len(warnings) == 1 and "dicom_series" in warnings[0]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["files"][0]["partial_coverage"] is True


def test_one_bad_input_is_one_line(tmp_path, capsys, data_root):
    png = data_root / "covid_ct_lung_infection_ma" / "images" / "s0696.jpg"
    code, _, stderr = _run([png, "-o", tmp_path], capsys)
    assert code == 2
    assert len(stderr.strip().splitlines()) == 1
    assert "8-bit picture" in stderr and "--intensity rank" in stderr


def test_rank_mode_on_an_8bit_slice_with_its_lung_mask(tmp_path, capsys, data_root):
    folder = data_root / "covid_ct_lung_infection_ma"
    code, _, stderr = _run(
        [
            folder / "images" / "s0720.jpg",
            "-o",
            tmp_path,
            "--intensity",
            "rank",
            "--lung-masks",
            folder / "masks_lung",
            "--format",
            "png,json",
        ],
        capsys,
    )
    assert code == 0, stderr
    from medrefine.io import read_mask

    labels = read_mask(tmp_path / "s0720.png")
    lung = read_mask(folder / "masks_lung" / "s0720.png") > 0
    np.testing.assert_array_equal(labels > 0, lung)
    summary = json.loads((tmp_path / "s0720.json").read_text())
    assert summary["intensity"] == "rank" and summary["lung_ml"] is None
    assert summary["classes"]["emphysema"]["voxels"] == 0  # never named in rank mode


@pytest.mark.slow
def test_every_ct_hu_sample(tmp_path, capsys, ct_hu):
    inputs = [ct_hu / "example_ct.nii.gz", ct_hu / "example_ct_sm.nii.gz", ct_hu / "dicom_series"]
    code, _, stderr = _run([*inputs, "-o", tmp_path, "--format", "nifti,dicom-seg,json"], capsys)
    assert code == 0, stderr
    for path in inputs[:2]:
        stem = path.name.replace(".nii.gz", "")
        assert nib.load(tmp_path / f"{stem}.nii.gz").shape == nib.load(path).shape
    assert _dciodvfy_errors(tmp_path / "dicom_series.dcm") == []
