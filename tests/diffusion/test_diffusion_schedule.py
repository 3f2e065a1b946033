"""Noise schedules and the refinement timestep grid."""

from __future__ import annotations

import pytest
import torch

from medrefine.diffusion import (
    DiffusionConfig,
    build_diffusion,
    make_betas,
    refinement_timesteps,
)
from medrefine.diffusion.bernoulli import BernoulliDiffusion
from medrefine.diffusion.gaussian import GaussianDiffusion
from medrefine.errors import ConfigError


def test_linear_betas_match_the_design_defaults():
    betas = make_betas("linear", 1000)
    assert betas.shape == (1000,) and betas.dtype == torch.float64
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)
    assert (betas.diff() > 0).all()


@pytest.mark.parametrize("T", [10, 100, 1000])
def test_cosine_betas_in_range_and_increasing_noise(T):
    betas = make_betas("cosine", T)
    assert betas.shape == (T,)
    assert (betas > 0).all() and (betas <= 0.999).all()
    abar = torch.cumprod(1 - betas, 0)
    assert (abar.diff() < 0).all()
    assert abar[-1] < 1e-3  # the end of the chain is (nearly) pure noise


def test_unknown_schedule():
    with pytest.raises(ConfigError, match="schedule"):
        make_betas("quadratic", 10)


@pytest.mark.parametrize(
    ("T", "strength", "steps", "expected"),
    [
        (1000, 0.3, 4, [300, 225, 150, 75]),
        (1000, 1.0, 4, [999, 749, 500, 250]),
        (1000, 0.5, 1, [500]),
        (10, 0.5, 4, [4, 3, 2, 1]),
        (1000, 1e-4, 4, [0]),  # t0 rounds to 0: one prediction at t = 0
    ],
)
def test_refinement_timesteps_exact(T, strength, steps, expected):
    assert refinement_timesteps(T, strength, steps) == expected


@pytest.mark.parametrize("T", [2, 10, 1000])
@pytest.mark.parametrize("strength", [0.01, 0.1, 0.3, 0.77, 1.0])
@pytest.mark.parametrize("steps", [1, 2, 3, 8, 50])
def test_refinement_timesteps_invariants(T, strength, steps):
    ts = refinement_timesteps(T, strength, steps)
    t0 = round(strength * (T - 1))
    assert ts[0] == t0
    assert 1 <= len(ts) <= steps
    assert all(a > b for a, b in zip(ts, ts[1:], strict=False))  # strictly descending
    assert all(0 <= t < T for t in ts)
    if t0 >= steps:
        # trailing spacing: all steps kept, the last prediction is made at round(t0 / steps)
        assert len(ts) == steps
        assert ts[-1] == round(t0 / steps) > 0
    else:  # fewer noise levels than steps: every level down to 0 (or nearly)
        assert ts[-1] <= 1


@pytest.mark.parametrize(("strength", "steps"), [(0.0, 4), (1.5, 4), (-0.1, 4), (0.3, 0)])
def test_refinement_timesteps_rejects(strength, steps):
    with pytest.raises(ConfigError):
        refinement_timesteps(1000, strength, steps)


def test_build_diffusion_and_config():
    g = build_diffusion(DiffusionConfig(num_timesteps=50, prediction="epsilon"))
    assert isinstance(g, GaussianDiffusion) and g.num_timesteps == 50
    assert g.prediction == "epsilon"
    b = build_diffusion(DiffusionConfig(kind="bernoulli", schedule="cosine", num_timesteps=20))
    assert isinstance(b, BernoulliDiffusion) and b.betas.shape == (20,)
    cfg = DiffusionConfig(kind="bernoulli")
    assert DiffusionConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "poisson"},
        {"prediction": "v"},
        {"kind": "bernoulli", "prediction": "epsilon"},
        {"num_timesteps": 1},
    ],
)
def test_diffusion_config_rejects(kwargs):
    with pytest.raises(ConfigError):
        DiffusionConfig(**kwargs)


def test_diffusion_config_unknown_key():
    with pytest.raises(ConfigError, match="unknown"):
        DiffusionConfig.from_dict({"kind": "gaussian", "steps": 4})
