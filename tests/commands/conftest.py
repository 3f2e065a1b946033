"""Tiny weights files and a tiny data folder for the command tests.

The tiny weights fixture (``tiny_weights``) lives in tests/conftest.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def disk_case(
    rng: np.random.Generator, shape: tuple[int, int] = (40, 48)
) -> tuple[np.ndarray, np.ndarray]:
    """A noisy RGB uint8 image with a bright disk, and its 0/255 mask."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    cy, cx, r = rng.uniform(12, h - 12), rng.uniform(12, w - 12), rng.uniform(5, 10)
    mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8) * 255
    image = rng.normal(60, 10, (h, w, 3)) + mask[..., None] * 0.6
    return np.clip(image, 0, 255).astype(np.uint8), mask


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """images/, masks/ and manifest.json: 6 cases (train 2, val 1, test 3)."""
    root = tmp_path_factory.mktemp("tiny_data")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    stems = [f"case{i}" for i in range(6)]
    for stem in stems:
        image, mask = disk_case(rng)
        Image.fromarray(image).save(root / "images" / f"{stem}.png")
        Image.fromarray(mask).save(root / "masks" / f"{stem}.png")
    split = {"train": stems[:2], "val": stems[2:3], "test": stems[3:]}
    (root / "manifest.json").write_text(json.dumps({"name": "tiny", "split": split}))
    return root


@pytest.fixture
def kvasir_image(data_dir: Path, tmp_path: Path) -> Path:
    """One real Kvasir-SEG image copied into tmp_path."""
    images = sorted((data_dir / "kvasir_seg" / "images").glob("*.jpg"))
    if not images:
        pytest.skip("no Kvasir-SEG images in the data folder")
    target = tmp_path / "real" / images[0].name
    target.parent.mkdir(parents=True)
    shutil.copy(images[0], target)
    return target
