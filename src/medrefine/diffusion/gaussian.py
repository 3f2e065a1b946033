"""Gaussian diffusion on masks in [-1, 1] (DDPM, Ho et al. 2020; DDIM, Song et al. 2021).

Only the arithmetic lives here: ``add_noise`` (the forward process), conversions between the
model's prediction and x0/epsilon, and one ``step`` of DDIM (eta = 0 deterministic, eta = 1
equals DDPM's ancestral sampling on the same grid). The sampling loop is written out in
``medrefine.refine``.
"""

from __future__ import annotations

import torch

from medrefine.diffusion.schedule import make_betas
from medrefine.errors import ConfigError


class GaussianDiffusion:
    """Schedule tensors for T steps; timesteps are integers in [0, T-1]."""

    def __init__(self, num_timesteps: int = 1000, schedule: str = "linear",
                 beta_start: float = 1e-4, beta_end: float = 0.02, prediction: str = "x0"):
        if prediction not in ("x0", "epsilon"):
            raise ConfigError(f"prediction must be 'x0' or 'epsilon', got {prediction!r}")
        self.num_timesteps = num_timesteps
        self.prediction = prediction
        self.betas = make_betas(schedule, num_timesteps, beta_start, beta_end)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)  # float64 (T,)

    def _abar(self, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        """alpha_bar_t broadcast to ``like``; t = -1 means "before step 0" (alpha_bar = 1)."""
        t = torch.as_tensor(t, device="cpu").long().reshape(-1)
        abar = torch.where(t >= 0, self.alphas_cumprod[t.clamp(min=0)], torch.ones(()))
        return abar.to(like.device, like.dtype).reshape(-1, *([1] * (like.ndim - 1)))

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | int
                  ) -> torch.Tensor:
        """q(x_t | x_0) = N(sqrt(abar_t) x0, (1 - abar_t) I)  (DDPM eq. 4)."""
        abar = self._abar(t, x0)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def predict_x0(self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor | int
                   ) -> torch.Tensor:
        """x0 estimate in [-1, 1]. For x0-prediction the model outputs mask logits."""
        if self.prediction == "x0":
            return 2.0 * torch.sigmoid(model_output) - 1.0
        abar = self._abar(t, x_t)  # DDPM eq. 15 solved for x0
        return ((x_t - (1 - abar).sqrt() * model_output) / abar.sqrt()).clamp(-1.0, 1.0)

    def epsilon_target(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The noise that takes ``x0`` to ``x_t`` at t (the epsilon-prediction target)."""
        abar = self._abar(t, x0)
        return (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()

    def step(self, x0_pred: torch.Tensor, x_t: torch.Tensor, t: int, t_prev: int,
             eta: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """One DDIM update x_t -> x_{t_prev} (Song et al. 2021, eq. 12), ``t_prev = -1`` at the end.

        1. eps   = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)
        2. sigma = eta * sqrt((1 - abar_prev) / (1 - abar_t)) * sqrt(1 - abar_t / abar_prev)
        3. x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z
        """
        abar_t, abar_prev = self._abar(t, x_t), self._abar(t_prev, x_t)
        eps = (x_t - abar_t.sqrt() * x0_pred) / (1 - abar_t).sqrt().clamp(min=1e-8)
        sigma = eta * ((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)).sqrt()
        x_prev = abar_prev.sqrt() * x0_pred + (1 - abar_prev - sigma**2).clamp(min=0).sqrt() * eps
        if eta > 0 and t_prev >= 0:
            z = torch.randn(x_t.shape, generator=generator, device="cpu").to(x_t)
            x_prev = x_prev + sigma * z
        return x_prev
