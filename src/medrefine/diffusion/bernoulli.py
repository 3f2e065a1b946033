"""Bernoulli diffusion on binary masks (BerDiff, Chen et al., MICCAI 2023).

The forward process flips pixels: q(x_t | x_0) = B(x_t; abar_t x_0 + (1 - abar_t) / 2), i.e.
x_t = x_0 XOR n with n ~ B((1 - abar_t) / 2). Masks here are {0, 1} (probabilities in [0, 1]).
The model predicts x0 logits; the reverse step samples from the posterior
q(x_s | x_t, x0_hat), with s < t any earlier grid point (a skip uses alpha = abar_t / abar_s).
Training minimises KL(q(x_{t-1}|x_t, x_0) || q(x_{t-1}|x_t, x0_hat)) plus BCE on x0_hat.
"""

from __future__ import annotations

import torch

from medrefine.diffusion.schedule import make_betas


class BernoulliDiffusion:
    def __init__(self, num_timesteps: int = 1000, schedule: str = "linear",
                 beta_start: float = 1e-4, beta_end: float = 0.02):
        self.num_timesteps = num_timesteps
        self.prediction = "x0"
        self.betas = make_betas(schedule, num_timesteps, beta_start, beta_end)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)

    def _abar(self, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, device="cpu").long().reshape(-1)
        abar = torch.where(t >= 0, self.alphas_cumprod[t.clamp(min=0)], torch.ones(()))
        return abar.to(like.device, like.dtype).reshape(-1, *([1] * (like.ndim - 1)))

    def marginal(self, x0: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """P(x_t = 1 | x_0) for x0 in [0, 1] (a soft x0 mixes the two cases linearly)."""
        abar = self._abar(t, x0)
        return abar * x0 + (1 - abar) / 2

    def add_noise(self, x0: torch.Tensor, t: torch.Tensor | int,
                  generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample x_t ~ q(x_t | x_0): a {0, 1} mask."""
        p = self.marginal(x0, t)
        u = torch.rand(p.shape, generator=generator, device="cpu").to(p)
        return (u < p).to(x0.dtype)

    def posterior(self, x_t: torch.Tensor, x0: torch.Tensor, t: int | torch.Tensor,
                  t_prev: int | torch.Tensor) -> torch.Tensor:
        """P(x_{t_prev} = 1 | x_t, x_0) (BerDiff eq. 6, generalised to a skip t -> t_prev)."""
        abar_t, abar_s = self._abar(t, x_t), self._abar(t_prev, x_t)
        alpha = abar_t / abar_s  # q(x_t | x_s) = B(alpha x_s + (1 - alpha) / 2)
        like1 = alpha * x_t + (1 - alpha) / 2          # P(x_t | x_s = 1)
        like0 = alpha * (1 - x_t) + (1 - alpha) / 2    # P(x_t | x_s = 0)
        prior1 = abar_s * x0 + (1 - abar_s) / 2        # P(x_s = 1 | x_0)
        theta1, theta0 = like1 * prior1, like0 * (1 - prior1)
        return theta1 / (theta1 + theta0).clamp(min=1e-12)

    def predict_x0(self, model_output: torch.Tensor, x_t: torch.Tensor, t) -> torch.Tensor:
        """x0 probability in [0, 1] from the model's logits."""
        return torch.sigmoid(model_output)

    def step(self, x0_prob: torch.Tensor, x_t: torch.Tensor, t: int, t_prev: int,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample x_{t_prev} ~ q(x_{t_prev} | x_t, x0_hat); at the end (t_prev < 0): x0_hat."""
        if t_prev < 0:
            return x0_prob
        p = self.posterior(x_t, x0_prob, t, t_prev)
        u = torch.rand(p.shape, generator=generator, device="cpu").to(p)
        return (u < p).to(x_t.dtype)

    def kl_loss(self, x_t: torch.Tensor, x0: torch.Tensor, x0_prob: torch.Tensor,
                t: torch.Tensor) -> torch.Tensor:
        """Mean KL between the true and the predicted one-step posteriors (t >= 1)."""
        q = self.posterior(x_t, x0, t, t - 1).clamp(1e-6, 1 - 1e-6)
        p = self.posterior(x_t, x0_prob, t, t - 1).clamp(1e-6, 1 - 1e-6)
        kl = q * (q / p).log() + (1 - q) * ((1 - q) / (1 - p)).log()
        return kl.mean()
