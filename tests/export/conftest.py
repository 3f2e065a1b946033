"""Tiny weights and one ONNX export of them (float32 + int8), shared by the export tests.

The weights carry the info layout ``training/`` writes (as in tests/conftest.py).
The export runs once per session through the command line, so ``medrefine export`` itself is
what the other tests read back.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from medrefine.checkpoint import file_sha256, save_weights
from medrefine.cli import main
from medrefine.diffusion import DiffusionConfig
from medrefine.models.denoiser import Denoiser, DenoiserConfig
from medrefine.models.registry import SegModelConfig, build_seg_model
from medrefine.preprocess import PreprocessConfig
from medrefine.refine import RefineParams

GRID = (32, 32)
COARSE_CFG = SegModelConfig(encoder="scratch", widths=(4, 8, 8, 8, 8), decoder_widths=(8, 8, 8, 4))
DENOISER_CFG = DenoiserConfig(encoder="scratch", widths=(8, 8, 8, 8), attention=True, time_dim=16)


def coarse_info() -> dict:
    return {
        "kind": "coarse",
        "model": COARSE_CFG.to_dict(),
        "preprocess": asdict(PreprocessConfig(size=GRID, channels=3)),
        "class_names": ["foreground"],
    }


def save_coarse(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    return save_weights(path, build_seg_model(COARSE_CFG), coarse_info())


@pytest.fixture
def retrained_coarse(tmp_path) -> Path:
    """The tiny coarse model with other weights (another seed): what retraining gives."""
    return save_coarse(tmp_path / "retrained" / "coarse.safetensors", seed=7)


@pytest.fixture(scope="session")
def onnx_weights(tmp_path_factory) -> dict[str, Path]:
    """{"coarse": path, "refiner": path}: seeded, untrained, 32x32 grid, 2 steps, 2 samples.

    Like the shared ``tiny_weights`` but with the denoiser's self-attention switched on, so its
    export (MultiheadAttention) is covered too."""
    folder = tmp_path_factory.mktemp("onnx_weights")
    coarse = save_coarse(folder / "coarse.safetensors", seed=0)
    torch.manual_seed(1)
    refiner_info = {
        "kind": "refiner",
        "denoiser": DENOISER_CFG.to_dict(),
        "diffusion": DiffusionConfig().to_dict(),
        "preprocess": asdict(PreprocessConfig(size=GRID, channels=3)),
        "refine_defaults": asdict(RefineParams(steps=2, strength=0.3, samples=2, seed=0)),
    }
    refiner = save_weights(folder / "refiner.safetensors", Denoiser(DENOISER_CFG), refiner_info)
    return {"coarse": coarse, "refiner": refiner}


@pytest.fixture(scope="session")
def onnx_dir(onnx_weights, tmp_path_factory) -> Path:
    """``medrefine export --onnx DIR --weights ... --refiner-weights ... --quantize int8``."""
    out = tmp_path_factory.mktemp("onnx") / "graphs"
    code = main(
        [
            "export",
            "--onnx",
            str(out),
            "--weights",
            str(onnx_weights["coarse"]),
            "--refiner-weights",
            str(onnx_weights["refiner"]),
            "--quantize",
            "int8",
        ]
    )
    assert code == 0
    return out


@pytest.fixture
def filled_cache(onnx_weights, onnx_dir, tmp_path, monkeypatch) -> Path:
    """A per-user cache (under tmp_path) that already holds both models' graphs."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = tmp_path / "cache" / "medrefine" / "onnx"
    for path in onnx_weights.values():
        shutil.copytree(onnx_dir, root / file_sha256(path))
    return root
