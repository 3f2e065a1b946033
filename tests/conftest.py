"""Shared test fixtures: the real data folder (``shared/data`` beside the repo) and tiny seeded
weights files with the same info layout as ``training/coarse.py`` and ``training/refiner.py``
write (``weights_info``), so code under test loads them exactly as it loads trained models."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from medrefine.checkpoint import save_weights
from medrefine.diffusion import DiffusionConfig
from medrefine.models.denoiser import Denoiser, DenoiserConfig
from medrefine.models.registry import SegModelConfig, build_seg_model
from medrefine.preprocess import PreprocessConfig
from medrefine.refine import RefineParams

DATA_DIR = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()


@pytest.fixture
def torchrun_env() -> dict[str, str]:
    """The environment for a ``torch.distributed.run`` child: this process's own, without the
    rank variables of an outer torchrun, one thread per process."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """``shared/data`` beside the repository root; tests using it skip when it is absent."""
    if not DATA_DIR.is_dir():
        pytest.skip(f"real data folder {DATA_DIR} not found (expected shared/data beside the repo)")
    return DATA_DIR


@pytest.fixture(scope="session")
def ct_hu(data_dir: Path) -> Path:
    """``shared/data/ct_hu_samples``: real CT in Hounsfield units (NIfTI volumes, a 20-slice
    DICOM series) with reference label maps."""
    folder = data_dir / "ct_hu_samples"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    return folder


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
