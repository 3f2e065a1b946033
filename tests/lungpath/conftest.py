"""Real data for the lung-pathology tests (../shared/data) and helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
CT_HU = DATA / "ct_hu_samples"


@pytest.fixture(scope="session")
def ct_hu() -> Path:
    if not CT_HU.is_dir():
        pytest.skip("../shared/data/ct_hu_samples is not here")
    return CT_HU


@pytest.fixture(scope="session")
def data_root() -> Path:
    if not DATA.is_dir():
        pytest.skip("../shared/data is not here")
    return DATA
