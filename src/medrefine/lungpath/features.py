"""Multi-timestep bottleneck features (DiffSegLung, sec. 2.3): no sampling.

For each timestep t in ``timesteps``: x_t = add_noise(x0, noise, t) with one seeded noise
image, one pass of the encoder to the bottleneck (stride ``net.stride``), then an average over
``pool`` x ``pool`` bottleneck cells (the footprint of a training patch, 32 px at stride 4),
so each location is described like the patches the distillation saw. The timesteps' features
are concatenated: len(timesteps) x widths[-1] channels per location (4 x 64 = 256 here; the
paper's model has 384).

3D models (``net.dims`` 3) see a stack of consecutive axial slices instead: one pass of the
encoder over (1, 1, D, H, W) per timestep gives the same per-slice maps (D, F, H/s, W/s)
(``bottleneck_features_3d``). A volume goes through in z-chunks of ``z_chunk`` slices, each
with ``z_halo`` context slices either side that are cropped after (``z_chunks``); the stack's
ends are replicate-padded by the halo, so a single 2D slice is a stack of one slice repeated.
With the default halo (-1: the net's z reach, ``NetConfig.z_radius``) the chunks give the
numbers of one pass over the whole padded stack. Each slice's noise comes from its own seed
(``slice_noise``), so a slice gets the same noise in every chunk that holds it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
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
    z_chunk: int = 16  # 3D models: slices per pass (plus the halo either side)
    z_halo: int = -1  # 3D models: context slices either side; -1 = the net's z reach (exact)

    def __post_init__(self):
        if not self.timesteps or min(self.timesteps) < 0:
            raise ConfigError(f"features.timesteps must be >= 0, got {self.timesteps}")
        if self.pool < 1 or self.grid_mm <= 0 or self.slice_batch < 1:
            raise ConfigError("features: pool >= 1, grid_mm > 0, slice_batch >= 1")
        if self.z_chunk < 1 or self.z_halo < -1:
            raise ConfigError(
                f"features: z_chunk >= 1 and z_halo >= 0 (or -1 for the net's z reach), got "
                f"z_chunk={self.z_chunk}, z_halo={self.z_halo}"
            )
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
    if model.cfg.dims != 2:
        raise ConfigError("bottleneck_features takes a 2D model; 3D: bottleneck_features_3d")
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


# ------------------------------------------------------------------ 3D models (net.dims 3)
Featurize3D = Callable[[np.ndarray, np.ndarray, int], np.ndarray]  # (D,H,W), lung, z0 -> maps


def halo_of(model, cfg: FeatureConfig) -> int:
    """The z halo a 3D model's chunks get: ``cfg.z_halo``, or the net's z reach for -1."""
    return model.cfg.z_radius if cfg.z_halo < 0 else cfg.z_halo


def slice_noise(z0: int, n: int, shape: tuple[int, int], seed: int) -> torch.Tensor:
    """(n, H, W) standard normal noise of stack slices z0 .. z0 + n - 1, each from its own
    seed, so a slice's noise does not depend on the chunk it is computed in."""
    return torch.stack(
        [
            torch.randn(shape, generator=torch.Generator().manual_seed(seed * 1_000_003 + z))
            for z in range(z0, z0 + n)
        ]
    )


@torch.no_grad()
def bottleneck_features_3d(
    model, schedule, x0: np.ndarray, cfg: FeatureConfig, z0: int = 0
) -> np.ndarray:
    """Features of a stack of consecutive axial slices from one 3D pass per timestep.

    Args:
        model: a ``LungDenoiser`` with ``cfg.dims == 3`` (eval mode).
        schedule: its ``GaussianDiffusion``.
        x0: (D, H, W) float32 in [-1, 1]; H and W divisible by the net's stride.
        cfg: timesteps, pooling (in-plane, per slice), seed.
        z0: index of ``x0[0]`` in the whole stack (picks each slice's noise).

    Returns:
        (D, len(timesteps) * C, H / stride, W / stride) float32, as ``bottleneck_features``.
    """
    if model.cfg.dims != 3:
        raise ConfigError("bottleneck_features_3d takes a 3D model (net.dims 3)")
    stride = model.cfg.stride
    if x0.ndim != 3 or x0.shape[-1] % stride or x0.shape[-2] % stride:
        raise ConfigError(f"slice stack {x0.shape} must be (D, H, W), H, W divisible by {stride}")
    x = torch.from_numpy(np.ascontiguousarray(x0, np.float32))[None, None]  # (1, 1, D, H, W)
    noise = slice_noise(z0, len(x0), tuple(x0.shape[1:]), cfg.noise_seed)[None, None]
    feats = []
    for t in cfg.timesteps:
        tt = torch.full((1,), t, dtype=torch.long)
        h = model.encode(schedule.add_noise(x, noise, tt), tt)[0].transpose(0, 1)  # (D,C,h,w)
        if cfg.pool > 1:
            h = F.avg_pool2d(h, cfg.pool, stride=1, padding=cfg.pool // 2, count_include_pad=False)[
                ..., : h.shape[-2], : h.shape[-1]
            ]
        feats.append(h)
    return torch.cat(feats, dim=1).numpy()


def z_chunks(
    featurize: Featurize3D, x: np.ndarray, lung: np.ndarray, chunk: int, halo: int
) -> Iterator[tuple[int, np.ndarray]]:
    """(start, maps of x[start : start + n]) for consecutive chunks of a (S, H, W) stack.

    The stack is replicate-padded by ``halo`` slices at both ends; each chunk is computed
    with ``halo`` slices of context either side (``featurize(stack, lung, z0)``, z0 the
    chunk's first slice in the padded stack) and cropped to its own slices."""
    pad = ((halo, halo), (0, 0), (0, 0))
    xp, lp = np.pad(x, pad, mode="edge"), np.pad(lung, pad, mode="edge")
    for start in range(0, len(x), chunk):
        n = min(chunk, len(x) - start)
        fmap = featurize(xp[start : start + n + 2 * halo], lp[start : start + n + 2 * halo], start)
        yield start, fmap[halo : halo + n]
