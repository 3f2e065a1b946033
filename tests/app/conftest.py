"""Fixtures for the web interface tests: small images (``tiny_weights``: tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture
def disk_image(tmp_path: Path) -> tuple[Path, Path]:
    """A noisy 40x48 RGB PNG with a bright disk, and its 0/255 mask PNG."""
    yy, xx = np.mgrid[:40, :48]
    mask = ((yy - 20) ** 2 + (xx - 22) ** 2 <= 64).astype(np.uint8) * 255
    rng = np.random.default_rng(0)
    image = np.clip(rng.normal(60, 10, (40, 48, 3)) + mask[..., None] * 0.6, 0, 255)
    image_path, mask_path = tmp_path / "disk.png", tmp_path / "disk_mask.png"
    Image.fromarray(image.astype(np.uint8)).save(image_path)
    Image.fromarray(mask).save(mask_path)
    return image_path, mask_path
