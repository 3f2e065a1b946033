"""The inpainting sampling loop, written out: few-step DDIM from pure noise, the known pixels
put back at every step, several samples in one batch, their mean the fill.

At each step the known pixels of ``x_t`` are replaced by the known image noised to the same
level (RePaint, Lugmayr et al. 2022), so the net always sees a consistent ``x_t``; its x0
estimate is forced to the known pixels too, and after the last step the result holds them
exactly."""

from __future__ import annotations

import numpy as np
import torch

from medrefine.diffusion import GaussianDiffusion, refinement_timesteps


@torch.no_grad()
def sample_fill(model: torch.nn.Module, schedule: GaussianDiffusion, image01: np.ndarray,
                hole: np.ndarray, prefill01: np.ndarray, steps: int = 4, samples: int = 4,
                seed: int = 0, eta: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Fill ``hole`` in ``image01`` on the model's grid.

    Args:
        image01, prefill01: float32 (H, W) in [0, 1]; hole: (H, W) 0/1 (1 = to fill).
        steps: DDIM steps from t = T-1; samples: samples averaged.
    Returns:
        fill01 (H, W) float32 in [0, 1], equal to ``image01`` outside the hole, and the
        per-pixel standard deviation across samples (0 outside the hole).
    """
    gen = torch.Generator().manual_seed(seed)
    known = torch.from_numpy(2 * image01.astype(np.float32) - 1)[None, None]  # (1, 1, H, W)
    m = torch.from_numpy(hole.astype(np.float32))[None, None]
    masked01 = torch.from_numpy(image01.astype(np.float32))[None, None] * (1 - m)
    pre01 = torch.from_numpy(prefill01.astype(np.float32))[None, None]
    masked01, m_b, pre01 = (v.expand(samples, -1, -1, -1) for v in (masked01, m, pre01))
    timesteps = refinement_timesteps(schedule.num_timesteps, 1.0, steps)
    x_t = torch.randn((samples, 1, *image01.shape), generator=gen)
    x0 = known.expand_as(x_t)
    for i, t in enumerate(timesteps):
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        noise = torch.randn(x_t.shape, generator=gen)
        x_t = m_b * x_t + (1 - m_b) * schedule.add_noise(known, noise, t)  # keep known pixels
        t_batch = torch.full((samples,), t, dtype=torch.long)
        logits = model(x_t, t_batch, masked01, m_b, pre01)
        x0 = m_b * schedule.predict_x0(logits, x_t, t) + (1 - m_b) * known
        x_t = schedule.step(x0, x_t, t, t_prev, eta=eta, generator=gen)
    fills01 = (x0[:, 0].clamp(-1, 1).numpy() + 1) / 2  # (samples, H, W)
    fill01 = np.where(hole > 0, fills01.mean(0), image01).astype(np.float32)
    spread = np.where(hole > 0, fills01.std(0), 0.0).astype(np.float32)
    return fill01, spread
