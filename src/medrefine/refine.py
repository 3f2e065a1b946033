"""Diffusion refinement of a coarse mask, conditioned on the image.

    x_t0 = add_noise(coarse, t0)            # strength picks t0: how much of the mask is "forgotten"
    for t in timesteps (t0 down to 0):      # DDIM (Gaussian) or posterior sampling (Bernoulli)
        x0_hat = denoiser(x_t, t, cond=(image, coarse))
        x_t = step(x0_hat, x_t, t -> t_prev)
    N samples run side by side along the batch axis; their mean is the refined mask, their
    spread (and the entropy of the mean) the uncertainty.

``from_noise=True`` samples from pure noise at t = T-1 instead (how MedSegDiff samples), for
the side-by-side comparisons in the benchmarks.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from medrefine.checkpoint import load_into, read_info
from medrefine.diffusion import DiffusionConfig, build_diffusion, refinement_timesteps
from medrefine.errors import ConfigError, InputError
from medrefine.fusion import FUSIONS, binary_entropy, fuse
from medrefine.inference import preprocess_config_from, resolve_device
from medrefine.models.blocks import fuse_conv_bn
from medrefine.models.denoiser import Denoiser, DenoiserConfig
from medrefine.preprocess import PreprocessConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RefineParams:
    """User-facing refinement settings.

    Attributes:
        steps: denoising steps from t0 to 0.
        strength: t0 / T in (0, 1]; higher = the coarse mask is trusted less.
        samples: independent samples (batched); > 1 gives a sample-spread uncertainty.
        seed: noise seed; the same seed gives the same mask.
        eta: DDIM stochasticity (0 deterministic after the initial noise, 1 = DDPM-like).
        fusion: how samples are combined: mean, vote or staple.
    """

    steps: int = 4
    strength: float = 0.3
    samples: int = 1
    seed: int = 0
    eta: float = 0.0
    fusion: str = "mean"

    def __post_init__(self):
        if self.steps < 1 or self.steps > 1000:
            raise ConfigError(f"steps must be in 1..1000, got {self.steps}")
        if not 0 < self.strength <= 1:
            raise ConfigError(f"strength must be in (0, 1], got {self.strength}")
        if self.samples < 1 or self.samples > 64:
            raise ConfigError(f"samples must be in 1..64, got {self.samples}")
        if not 0 <= self.eta <= 1:
            raise ConfigError(f"eta must be in [0, 1], got {self.eta}")
        if self.fusion not in FUSIONS:
            raise ConfigError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")


@dataclass
class RefineOutput:
    """All arrays on the model grid: probs/uncertainty (H, W), samples (N, H, W)."""

    probs: np.ndarray
    uncertainty: np.ndarray
    samples: np.ndarray
    timesteps: list[int]


class Refiner:
    def __init__(self, model: Denoiser, diffusion_cfg: DiffusionConfig,
                 pre_cfg: PreprocessConfig, device: torch.device | str = "cpu",
                 info: dict | None = None):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        # channels-last: the same float32 arithmetic, about 35% faster denoising steps on CPU
        self.channels_last = isinstance(model, torch.nn.Module)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.diffusion_cfg = diffusion_cfg
        self.diffusion = build_diffusion(diffusion_cfg)
        self.pre_cfg = pre_cfg
        self.info = info or {}
        self.defaults = RefineParams(**self.info.get("refine_defaults", {}))

    @classmethod
    def from_weights(cls, path: str | Path, device: str = "auto", fold_bn: bool = False
                     ) -> Refiner:
        """``fold_bn``: fold BatchNorm into the convolutions (inference only; see
        ``models.blocks.fuse_conv_bn``)."""
        info = read_info(path)
        if info.get("kind") != "refiner":
            raise InputError(f"{path}: holds a {info.get('kind')!r} model, not a diffusion "
                             "refiner")
        model = load_into(Denoiser(DenoiserConfig.from_dict(info["denoiser"]), pretrained=False),
                          path)
        if fold_bn:
            model = fuse_conv_bn(model)
        return cls(model, DiffusionConfig.from_dict(info["diffusion"]),
                   preprocess_config_from(info["preprocess"]), resolve_device(device), info)

    def describe(self) -> dict:
        return {"denoiser": self.model.cfg.to_dict(), "diffusion": self.diffusion_cfg.to_dict(),
                "preprocess": asdict(self.pre_cfg)}

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    @torch.inference_mode()
    def refine_grid(self, image01: np.ndarray, coarse_probs: np.ndarray,
                    params: RefineParams | None = None, from_noise: bool = False
                    ) -> RefineOutput:
        """image01 (C, H, W) and coarse_probs (H, W) on the model grid -> RefineOutput."""
        p = params or self.defaults
        if coarse_probs.shape != image01.shape[1:]:
            raise InputError(f"coarse mask shape {coarse_probs.shape} does not match the image "
                             f"grid {image01.shape[1:]}")
        dev, n, diff = self.device, p.samples, self.diffusion
        gen = torch.Generator().manual_seed(p.seed)
        image = torch.as_tensor(image01, dtype=torch.float32, device=dev)[None]
        coarse = torch.as_tensor(coarse_probs, dtype=torch.float32, device=dev)[None, None]
        cond = self.model.encode_condition(self._layout(image), self._layout(coarse))
        T = diff.num_timesteps
        timesteps = refinement_timesteps(T, 1.0 if from_noise else p.strength, p.steps)
        t0 = timesteps[0]
        start = coarse.expand(n, -1, -1, -1)
        if self.diffusion_cfg.kind == "gaussian":
            noise = torch.randn((n, 1, *coarse.shape[-2:]), generator=gen).to(dev)
            x_t = noise if from_noise else diff.add_noise(2 * start - 1, noise, t0)
        else:
            x_t = diff.add_noise(torch.full_like(start, 0.5) if from_noise else start, t0, gen)
        for i, t in enumerate(timesteps):
            t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
            net_in = x_t if self.diffusion_cfg.kind == "gaussian" else 2 * x_t - 1
            t_batch = torch.full((n,), t, device=dev, dtype=torch.long)
            out = self.model(self._layout(net_in), t_batch, cond)
            x0_hat = diff.predict_x0(out.float(), x_t, t)
            if self.diffusion_cfg.kind == "gaussian":
                x_t = diff.step(x0_hat, x_t, t, t_prev, eta=p.eta, generator=gen)
            else:
                x_t = diff.step(x0_hat, x_t, t, t_prev, generator=gen)
        probs = x0_hat if self.diffusion_cfg.kind == "bernoulli" else (x0_hat + 1) / 2
        samples = probs[:, 0].clamp(0, 1).cpu().numpy()
        fused = fuse(samples, p.fusion)
        uncertainty = binary_entropy(fused)
        if n > 1:  # sample disagreement adds to the entropy of the fused mask
            uncertainty = np.maximum(uncertainty, 2 * samples.std(0))
        return RefineOutput(fused.astype(np.float32), uncertainty.clip(0, 1), samples, timesteps)
