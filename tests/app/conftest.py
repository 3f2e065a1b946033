"""Fixtures for the web interface tests: tiny seeded weights (the builder of
``tests/commands/conftest.py``, 32x32 grid, 2 steps, 2 samples) and small images."""

from __future__ import annotations

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
