"""Noise schedules and diffusion arithmetic (Gaussian DDPM/DDIM and Bernoulli)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from medrefine.diffusion.bernoulli import BernoulliDiffusion
from medrefine.diffusion.gaussian import GaussianDiffusion
from medrefine.diffusion.schedule import make_betas, refinement_timesteps
from medrefine.errors import ConfigError

__all__ = ["BernoulliDiffusion", "DiffusionConfig", "GaussianDiffusion", "build_diffusion",
           "make_betas", "refinement_timesteps"]


@dataclass(frozen=True)
class DiffusionConfig:
    """kind: ``gaussian`` or ``bernoulli``; the design's defaults: 1000 linear steps
    1e-4..0.02. ``prediction`` (gaussian only): ``x0`` or ``epsilon``."""

    kind: str = "gaussian"
    num_timesteps: int = 1000
    schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    prediction: str = "x0"

    def __post_init__(self):
        if self.kind not in ("gaussian", "bernoulli"):
            raise ConfigError(f"diffusion kind must be gaussian or bernoulli, got {self.kind!r}")
        if self.prediction not in ("x0", "epsilon"):
            raise ConfigError(f"prediction must be x0 or epsilon, got {self.prediction!r}")
        if self.kind == "bernoulli" and self.prediction != "x0":
            raise ConfigError("Bernoulli diffusion predicts x0 only")
        if self.num_timesteps < 2:
            raise ConfigError("num_timesteps must be >= 2")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DiffusionConfig:
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown diffusion config keys {sorted(unknown)}")
        return cls(**data)


def build_diffusion(cfg: DiffusionConfig) -> GaussianDiffusion | BernoulliDiffusion:
    if cfg.kind == "gaussian":
        return GaussianDiffusion(cfg.num_timesteps, cfg.schedule, cfg.beta_start, cfg.beta_end,
                                 cfg.prediction)
    return BernoulliDiffusion(cfg.num_timesteps, cfg.schedule, cfg.beta_start, cfg.beta_end)
