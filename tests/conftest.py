"""Shared test fixtures: the location of the real data folder (``shared/data`` beside the repo)."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA_DIR = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """``shared/data`` beside the repository root; tests using it skip when it is absent."""
    if not DATA_DIR.is_dir():
        pytest.skip(f"real data folder {DATA_DIR} not found (expected shared/data beside the repo)")
    return DATA_DIR
