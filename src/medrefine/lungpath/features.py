"""Multi-timestep bottleneck features (DiffSegLung, sec. 2.3): no sampling.

For each timestep t in ``timesteps``: x_t = add_noise(x0, noise, t) with one seeded noise
image, one pass of the encoder to the bottleneck (stride ``net.stride``), then an average over
``pool`` x ``pool`` bottleneck cells (the footprint of a training patch, 32 px at stride 4),
so each location is described like the patches the distillation saw. The timesteps' features
are concatenated: len(timesteps) x widths[-1] channels per location (4 x 64 = 256 here; the
paper's model has 384).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from medrefine.errors import ConfigError


@dataclass(frozen=True)
class FeatureConfig:
    timesteps: tuple[int, ...] = (20, 100, 250, 500)
    pool: int = 8
    grid_mm: float = 1.4  # HU inputs: in-plane pixel size the features are computed on
    noise_seed: int = 0
    slice_batch: int = 4

    def __post_init__(self):
        if not self.timesteps or min(self.timesteps) < 0:
            raise ConfigError(f"features.timesteps must be >= 0, got {self.timesteps}")
        if self.pool < 1 or self.grid_mm <= 0 or self.slice_batch < 1:
            raise ConfigError("features: pool >= 1, grid_mm > 0, slice_batch >= 1")
        object.__setattr__(self, "timesteps", tuple(int(t) for t in self.timesteps))


@torch.no_grad()
def bottleneck_features(model, schedule, x0: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """Features of slices in [-1, 1].

    Args:
        model: ``LungDenoiser`` (eval mode).
        schedule: its ``GaussianDiffusion``.
        x0: (S, H, W) float32 in [-1, 1]; H and W divisible by the net's stride.
        cfg: timesteps, pooling, seed.

    Returns:
        (S, len(timesteps) * C, H / stride, W / stride) float32.
    """
    stride = model.cfg.stride
    if x0.shape[-1] % stride or x0.shape[-2] % stride:
        raise ConfigError(f"slices {x0.shape[-2:]} must divide by the net's stride {stride}")
    gen = torch.Generator().manual_seed(cfg.noise_seed)
    out = []
    for start in range(0, len(x0), cfg.slice_batch):
        x = torch.from_numpy(np.ascontiguousarray(x0[start : start + cfg.slice_batch]))[:, None]
        noise = torch.randn(x.shape, generator=gen)
        feats = []
        for t in cfg.timesteps:
            tt = torch.full((len(x),), t, dtype=torch.long)
            h = model.encode(schedule.add_noise(x, noise, tt), tt)  # (B, C, H/s, W/s)
            if cfg.pool > 1:
                h = F.avg_pool2d(
                    h, cfg.pool, stride=1, padding=cfg.pool // 2, count_include_pad=False
                )[..., : h.shape[-2], : h.shape[-1]]
            feats.append(h)
        out.append(torch.cat(feats, dim=1).numpy())
    return np.concatenate(out)
