"""Fixtures for the I/O tests: the DICOM samples and the MNI volume from ``shared/data``."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid


@pytest.fixture(scope="session")
def dicom_dir(data_dir: Path) -> Path:
    folder = data_dir / "dicom_samples"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    return folder


@pytest.fixture(scope="session")
def mni_path(data_dir: Path) -> Path:
    path = data_dir / "mni152_nifti" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path


@pytest.fixture
def make_series():
    """Function writing a small CT series folder built from CT_small.dcm (see below)."""
    return _make_series


def _make_series(folder: Path, source: Path, n: int = 4, *, positions: bool = True) -> list[float]:
    """n slices of CT_small at z = 0, 2.5, 5 ... written in shuffled order; returns z per file."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    zs = []
    for k, i in enumerate([2, 0, 3, 1][:n] if n == 4 else range(n)):
        ds = pydicom.dcmread(source)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        ds.PixelData = (ds.pixel_array + 100 * i).astype(ds.pixel_array.dtype).tobytes()
        if positions:
            ds.ImagePositionPatient = [0.0, 0.0, 2.5 * i]
        else:
            del ds.ImagePositionPatient
        ds.save_as(folder / f"file{k}.dcm")
        zs.append(2.5 * i)
    return zs
