"""Noise schedules and the timestep grid used to refine from a strength ``t0``."""

from __future__ import annotations

import math

import torch

from medrefine.errors import ConfigError


def make_betas(schedule: str, num_timesteps: int, beta_start: float = 1e-4,
               beta_end: float = 0.02) -> torch.Tensor:
    """``linear`` (Ho et al. 2020, the design's default 1e-4..0.02) or ``cosine``
    (Nichol & Dhariwal 2021, eq. 17, s = 0.008)."""
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
    if schedule == "cosine":
        s = 0.008
        steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        alphas_cumprod = f / f[0]
        return (1 - alphas_cumprod[1:] / alphas_cumprod[:-1]).clamp(max=0.999)
    raise ConfigError(f"unknown noise schedule {schedule!r}; use linear or cosine")


def refinement_timesteps(num_timesteps: int, strength: float, steps: int) -> list[int]:
    """Descending timesteps from ``t0 = round(strength * (T - 1))`` to 0, ``steps`` of them
    (evenly spaced, as DDIM's "trailing" spacing): refinement starts at t0 and its last
    prediction is made at t = 0 ... or at the smallest grid point."""
    if not 0 < strength <= 1:
        raise ConfigError(f"strength must be in (0, 1], got {strength}")
    if steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}")
    t0 = max(0, round(strength * (num_timesteps - 1)))
    steps = min(steps, t0 + 1)
    grid = torch.linspace(t0, 0, steps + 1)[:-1] if steps > 1 else torch.tensor([t0])
    return sorted({int(round(t.item())) for t in grid}, reverse=True)
