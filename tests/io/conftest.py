"""Fixtures for the I/O tests: the DICOM samples and the MNI volume from ``shared/data``."""

from __future__ import annotations

from pathlib import Path

import pytest


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
