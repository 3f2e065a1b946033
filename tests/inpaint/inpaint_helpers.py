"""Shared by the inpaint tests: the tiny model config and a synthetic X-ray-like image."""

from __future__ import annotations

import numpy as np

from medrefine.inpaint.model import InpaintDefaults, InpaintModelConfig
from medrefine.inpaint.net import InpaintNetConfig

TINY = InpaintModelConfig(
    size=32,
    net=InpaintNetConfig(widths=(8, 8, 8, 8), patch=4, time_dim=16, attention=False,
                         refine_channels=4),
    defaults=InpaintDefaults(steps=2, samples=2, blend="hard"),
)


def xray_like(rng: np.random.Generator, shape=(48, 40)) -> np.ndarray:
    """A smooth uint8 image with two dark 'lung' ellipses and bright horizontal bands."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w] / np.array([h, w])[:, None, None]
    lungs = (((yy - 0.5) / 0.35) ** 2 + ((xx - 0.3) / 0.15) ** 2 < 1) | \
        (((yy - 0.5) / 0.35) ** 2 + ((xx - 0.7) / 0.15) ** 2 < 1)
    image = 170 - 90 * lungs + 20 * np.sin(yy * 25) + rng.normal(0, 4, (h, w))
    return np.clip(image, 0, 255).astype(np.uint8)
