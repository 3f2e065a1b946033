"""How ``segment`` turns INPUT arguments into inputs: files, folders, DICOM series, globs."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import pydicom
import pytest
from pydicom.uid import generate_uid

from medrefine.batch.inputs import expand_inputs, unique_stems
from medrefine.cli import main


@pytest.fixture
def ct_small(data_dir: Path) -> Path:
    path = data_dir / "dicom_samples" / "CT_small.dcm"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path


def _series(folder: Path, source: Path, n: int = 3) -> Path:
    """n slices of ``source`` in one series, 2.5 mm apart."""
    folder.mkdir(parents=True)
    series_uid = generate_uid()
    for i in range(n):
        ds = pydicom.dcmread(source)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [0.0, 0.0, 2.5 * i]
        ds.save_as(folder / f"slice{i}")  # no suffix, as scanners often write them
    return folder


def test_expand_inputs_files_folders_globs(tiny_data, tmp_path, ct_small):
    series = _series(tmp_path / "series", ct_small)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name in ("a.dcm", "b.dcm"):  # two files, two series: each is an input
        ds = pydicom.dcmread(ct_small)
        ds.SeriesInstanceUID = generate_uid()
        ds.save_as(mixed / name)
    (mixed / "readme.txt").write_text("skipped")
    specs = [
        str(tiny_data / "images" / "case0.png"),
        str(tiny_data / "images" / "case*.png"),
        str(series),
        str(mixed),
        str(tmp_path / "none*.png"),
        str(tmp_path / "gone.png"),
    ]
    inputs, problems = expand_inputs(specs)
    names = [p.name for p in inputs]
    assert names == [f"case{i}.png" for i in range(6)] + ["series", "a.dcm", "b.dcm"]
    assert [spec for spec, _ in problems] == specs[-2:]


def test_unique_stems_never_collide(tmp_path):
    paths = [tmp_path / "a" / "x.png", tmp_path / "b" / "x.jpg", tmp_path / "y.nii.gz"]
    assert unique_stems(paths) == ["x", "x_2", "y"]


def test_segment_dicom_series_folder_as_one_volume(tiny_weights, tmp_path, ct_small, capsys):
    series = _series(tmp_path / "ct", ct_small)
    out = tmp_path / "out"
    code = main(
        [
            "segment",
            str(series),
            "-o",
            str(out),
            "--format",
            "nifti",
            "--weights",
            str(tiny_weights["coarse"]),
            "--no-refine",
            "--device",
            "cpu",
        ]
    )
    assert code == 0, capsys.readouterr().err
    volume = nib.load(out / "ct.nii.gz")
    assert sorted(volume.shape) == [3, 128, 128]
    report = json.loads((out / "report.json").read_text())
    assert report["files"][0]["shape"] == [3, 128, 128]
