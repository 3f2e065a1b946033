"""Tiny seeded inpainting weights and a tiny chest-like data folder for the inpaint tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from inpaint_helpers import TINY, xray_like
from PIL import Image

from medrefine.checkpoint import save_weights
from medrefine.inpaint.model import build_model, weights_info


@pytest.fixture(scope="session")
def tiny_inpaint_weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("inpaint_weights")
    model = build_model(TINY)
    with torch.no_grad():  # not the zero init: the net's own output must show in the tests
        model.head.weight.normal_(0, 0.05)
    return save_weights(folder / "inpaint.safetensors", model, weights_info(TINY, {"seed": 0}))


@pytest.fixture(scope="session")
def tiny_cxr_data(tmp_path_factory) -> Path:
    """images/, masks/, masks_multiclass/ (label 2 = a 'device' bar) and a manifest split."""
    root = tmp_path_factory.mktemp("tiny_cxr")
    for sub in ("images", "masks", "masks_multiclass"):
        (root / sub).mkdir()
    rng = np.random.default_rng(0)
    stems = [f"cxr{i}" for i in range(6)]
    for i, stem in enumerate(stems):
        image = xray_like(rng)
        labels = (image < 120).astype(np.uint8)
        labels[10:14, 5 + i:30] = 2
        Image.fromarray(image).save(root / "images" / f"{stem}.png")
        Image.fromarray((labels == 1).astype(np.uint8) * 255).save(root / "masks" / f"{stem}.png")
        Image.fromarray(labels).save(root / "masks_multiclass" / f"{stem}.png")
    split = {"train": stems[:3], "val": stems[3:5], "test": stems[5:]}
    (root / "manifest.json").write_text(json.dumps({"split": split}))
    return root
