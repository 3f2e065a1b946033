"""Tiny weights files and a tiny data folder for the command tests.

The weights carry the same info layout as ``training/coarse.py`` and ``training/refiner.py``
write (``weights_info``), so the commands load them exactly as they load trained models.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medrefine.checkpoint import save_weights
from medrefine.diffusion import DiffusionConfig
from medrefine.models.denoiser import Denoiser, DenoiserConfig
from medrefine.models.registry import SegModelConfig, build_seg_model
from medrefine.preprocess import PreprocessConfig
from medrefine.refine import RefineParams

GRID = (32, 32)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> dict[str, Path]:
    """{"coarse": path, "refiner": path}: seeded, untrained, 32x32 grid, 2 steps, 2 samples."""
    folder = tmp_path_factory.mktemp("weights")
    pre = PreprocessConfig(size=GRID, channels=3)
    torch.manual_seed(0)
    model_cfg = SegModelConfig(
        encoder="scratch", widths=(4, 8, 8, 8, 8), decoder_widths=(8, 8, 8, 4)
    )
    coarse_info = {
        "kind": "coarse",
        "model": model_cfg.to_dict(),
        "preprocess": asdict(pre),
        "class_names": ["foreground"],
        "training": {"data_dir": "tiny", "seed": 0},
    }
    coarse = save_weights(folder / "coarse.safetensors", build_seg_model(model_cfg), coarse_info)
    den_cfg = DenoiserConfig(encoder="scratch", widths=(8, 8, 8, 8), attention=False, time_dim=16)
    params = RefineParams(steps=2, strength=0.3, samples=2, seed=0)
    refiner_info = {
        "kind": "refiner",
        "denoiser": den_cfg.to_dict(),
        "diffusion": DiffusionConfig().to_dict(),
        "preprocess": asdict(pre),
        "refine_defaults": asdict(params),
        "training": {"data_dir": "tiny", "seed": 0, "coarse_weights": "coarse.safetensors"},
    }
    refiner = save_weights(folder / "refiner.safetensors", Denoiser(den_cfg), refiner_info)
    return {"coarse": coarse, "refiner": refiner}


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
