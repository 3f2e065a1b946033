"""The refinement sampling loop: shapes, ranges, seeding, samples and fusion, from-noise
sampling, Bernoulli, and oracle denoisers that make the loop's arithmetic checkable."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from medrefine.checkpoint import save_weights
from medrefine.diffusion import DiffusionConfig
from medrefine.errors import ConfigError, InputError
from medrefine.models.denoiser import Denoiser, DenoiserConfig
from medrefine.preprocess import PreprocessConfig
from medrefine.refine import RefineParams, Refiner

H = W = 32
TINY = DenoiserConfig(
    image_channels=1, encoder="scratch", widths=(8, 8, 8, 8), attention=False, time_dim=16
)
PRE = PreprocessConfig(size=(H, W), channels=1)


def _disk(h=H, w=W, r=9):
    yy, xx = np.mgrid[:h, :w]
    return ((yy - h / 2) ** 2 + (xx - w / 2) ** 2 <= r * r).astype(np.float32)


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    image01 = np.clip(0.2 + 0.6 * _disk() + 0.1 * rng.normal(size=(H, W)), 0, 1)[None]
    coarse = np.clip(_disk(r=8) * 0.9 + 0.05, 0, 1)
    return image01.astype(np.float32), coarse.astype(np.float32)


def _refiner(kind="gaussian", prediction="x0", seed=0):
    torch.manual_seed(seed)
    return Refiner(Denoiser(TINY), DiffusionConfig(kind=kind, prediction=prediction), PRE)


@pytest.fixture(scope="module")
def refiner():
    return _refiner()


@pytest.mark.parametrize(
    ("kind", "prediction"), [("gaussian", "x0"), ("gaussian", "epsilon"), ("bernoulli", "x0")]
)
@pytest.mark.parametrize("samples", [1, 3])
def test_shapes_and_ranges(inputs, kind, prediction, samples):
    out = _refiner(kind, prediction).refine_grid(*inputs, RefineParams(steps=2, samples=samples))
    assert out.probs.shape == (H, W) and out.probs.dtype == np.float32
    assert out.uncertainty.shape == (H, W)
    assert out.samples.shape == (samples, H, W)
    for arr in (out.probs, out.uncertainty, out.samples):
        assert np.isfinite(arr).all() and arr.min() >= 0 and arr.max() <= 1
    assert out.timesteps == [300, 150]  # default strength 0.3 of T = 1000, 2 steps


@pytest.mark.parametrize("kind", ["gaussian", "bernoulli"])
def test_same_seed_is_bit_identical(inputs, kind):
    r = _refiner(kind)
    params = RefineParams(steps=2, samples=2, seed=7, eta=0.5 if kind == "gaussian" else 0.0)
    a, b = r.refine_grid(*inputs, params), r.refine_grid(*inputs, params)
    assert np.array_equal(a.probs, b.probs)
    assert np.array_equal(a.samples, b.samples)
    assert np.array_equal(a.uncertainty, b.uncertainty)


def test_different_seed_differs(refiner, inputs):
    a = refiner.refine_grid(*inputs, RefineParams(steps=2, samples=3, seed=0))
    b = refiner.refine_grid(*inputs, RefineParams(steps=2, samples=3, seed=1))
    assert not np.array_equal(a.samples, b.samples)
    assert not np.array_equal(a.probs, b.probs)
    # and the samples of one run are not copies of each other
    assert not np.array_equal(a.samples[0], a.samples[1])


def test_samples_spread_raises_uncertainty(refiner, inputs):
    out = refiner.refine_grid(*inputs, RefineParams(steps=2, samples=4, seed=0))
    assert (out.uncertainty >= 2 * out.samples.std(0) - 1e-6).all()


@pytest.mark.parametrize("fusion", ["mean", "vote", "staple"])
def test_fusion(refiner, inputs, fusion):
    n = 4
    out = refiner.refine_grid(*inputs, RefineParams(steps=2, samples=n, fusion=fusion))
    if fusion == "mean":
        np.testing.assert_allclose(out.probs, out.samples.mean(0), atol=1e-6)
    elif fusion == "vote":
        np.testing.assert_allclose(out.probs, (out.samples > 0.5).mean(0), atol=1e-6)
        assert set(np.unique(out.probs * n).round(4)) <= {0.0, 1.0, 2.0, 3.0, 4.0}
    else:
        agree = (out.samples > 0.5).all(0) | (out.samples <= 0.5).all(0)
        np.testing.assert_array_equal(out.probs[agree] > 0.5, (out.samples[0] > 0.5)[agree])


@pytest.mark.parametrize("kind", ["gaussian", "bernoulli"])
def test_from_noise_starts_at_the_last_timestep(inputs, kind):
    out = _refiner(kind).refine_grid(*inputs, RefineParams(steps=3, strength=0.2), from_noise=True)
    assert out.timesteps[0] == 999 and len(out.timesteps) == 3
    assert out.timesteps == sorted(out.timesteps, reverse=True)


def test_strength_picks_t0(refiner, inputs):
    out = refiner.refine_grid(*inputs, RefineParams(steps=4, strength=0.5))
    assert out.timesteps == [500, 375, 250, 125]


def test_defaults_come_from_the_weights_info(inputs):
    r = Refiner(
        Denoiser(TINY),
        DiffusionConfig(),
        PRE,
        info={"refine_defaults": {"steps": 1, "strength": 0.1}},
    )
    assert r.defaults == RefineParams(steps=1, strength=0.1)
    assert r.refine_grid(*inputs).timesteps == [100]


def test_mismatched_coarse_shape(refiner, inputs):
    image01, coarse = inputs
    with pytest.raises(InputError, match="does not match"):
        refiner.refine_grid(image01, coarse[:-1])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"steps": 0},
        {"strength": 0},
        {"strength": 1.2},
        {"samples": 0},
        {"samples": 65},
        {"eta": 2},
        {"fusion": "max"},
    ],
)
def test_params_rejected(kwargs):
    with pytest.raises(ConfigError):
        RefineParams(**kwargs)


# ---------------------------------------------------------------- oracle denoisers
class _Oracle(nn.Module):
    """Predicts the true answer ``target`` (H, W) in {0, 1}: x0 logits or the exact epsilon
    (which needs the right t and schedule to come out right)."""

    def __init__(self, target: np.ndarray, diffusion_cfg: DiffusionConfig):
        super().__init__()
        from medrefine.diffusion import build_diffusion

        self.target = torch.as_tensor(target)[None, None]
        self.diffusion = build_diffusion(diffusion_cfg)
        self.cfg = TINY
        self.seen_t: list[int] = []

    def encode_condition(self, image01, coarse):
        return image01, []

    def forward(self, x_t, t, cond):
        self.seen_t.append(int(t[0]))
        x0 = (2 * self.target - 1).expand_as(x_t)
        if self.diffusion.prediction == "x0":
            return 40.0 * x0  # logits of the target
        abar = self.diffusion.alphas_cumprod[t].float().reshape(-1, 1, 1, 1)
        return (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()


@pytest.mark.parametrize(
    ("kind", "prediction"), [("gaussian", "x0"), ("gaussian", "epsilon"), ("bernoulli", "x0")]
)
@pytest.mark.parametrize("from_noise", [False, True])
def test_an_oracle_denoiser_gives_back_the_truth(inputs, kind, prediction, from_noise):
    image01, coarse = inputs
    truth = _disk(r=11)
    cfg = DiffusionConfig(kind=kind, prediction=prediction)
    oracle = _Oracle(truth, cfg)
    out = Refiner(oracle, cfg, PRE).refine_grid(
        image01, coarse, RefineParams(steps=3, strength=0.6, samples=2), from_noise=from_noise
    )
    np.testing.assert_allclose(out.probs, truth, atol=1e-3)
    assert out.uncertainty.max() < 0.01
    assert oracle.seen_t == out.timesteps  # one call per timestep, with the grid's t


def test_from_weights_round_trip(tmp_path, refiner, inputs):
    info = {
        "kind": "refiner",
        **refiner.describe(),
        "refine_defaults": {"steps": 2, "strength": 0.2},
    }
    path = save_weights(tmp_path / "r.safetensors", refiner.model, info)
    loaded = Refiner.from_weights(path, device="cpu")
    assert loaded.defaults == RefineParams(steps=2, strength=0.2)
    params = RefineParams(steps=2, samples=2)
    np.testing.assert_array_equal(
        loaded.refine_grid(*inputs, params).probs, refiner.refine_grid(*inputs, params).probs
    )
    save_weights(tmp_path / "c.safetensors", refiner.model, {**info, "kind": "coarse"})
    with pytest.raises(InputError, match="not a diffusion refiner"):
        Refiner.from_weights(tmp_path / "c.safetensors", device="cpu")


def test_auto_strength_table_and_checks():
    from medrefine.refine import AutoStrength

    auto = AutoStrength(edges=(0.1, 0.3), strengths=(0.1, 0.4, 0.8))
    assert [auto.pick(d) for d in (0.0, 0.1, 0.2, 0.3, 0.9)] == [0.1, 0.4, 0.4, 0.8, 0.8]
    assert AutoStrength.from_dict(auto.to_dict()) == auto
    assert auto.to_dict()["max_doubt"] is None  # inf is stored as null (JSON has no inf)
    with pytest.raises(ConfigError):
        AutoStrength(edges=(0.3, 0.1), strengths=(0.1, 0.2, 0.3))
    with pytest.raises(ConfigError):
        AutoStrength(edges=(0.1,), strengths=(0.1,))
    assert RefineParams(strength="auto").strength == "auto"
    assert RefineParams(strength="0.4").strength == 0.4
    with pytest.raises(ConfigError, match="auto"):
        RefineParams(strength="strong")


@pytest.mark.parametrize("kind", ["gaussian", "bernoulli"])
def test_auto_strength_picks_from_the_probe(inputs, kind):
    from medrefine.refine import AutoStrength

    refiner = _refiner(kind)
    refiner.auto = AutoStrength(edges=(0.5,), strengths=(0.2, 0.6))
    out = refiner.refine_grid(*inputs, RefineParams(steps=2, strength="auto"))
    assert 0 <= out.disagreement <= 1
    assert out.strength == (0.2 if out.disagreement < 0.5 else 0.6)
    assert out.timesteps[0] == round(out.strength * 999)
    again = refiner.refine_grid(*inputs, RefineParams(steps=2, strength="auto"))
    np.testing.assert_array_equal(out.probs, again.probs)  # seeded: the same
    fixed = refiner.refine_grid(*inputs, RefineParams(steps=2, strength=0.3))
    assert fixed.disagreement is None and fixed.strength == 0.3


def test_leave_alone_returns_the_input_where_the_refiner_is_in_doubt(inputs):
    from dataclasses import replace

    from medrefine.refine import AutoStrength

    refiner = _refiner()
    image01, coarse = inputs
    refiner.auto = AutoStrength(max_doubt=-1.0)  # every result counts as in doubt
    kept = refiner.refine_grid(image01, coarse, RefineParams(steps=2))
    assert kept.left_alone and np.array_equal(kept.probs, coarse)
    assert kept.decision == "kept: refiner in doubt" == kept.summary()["decision"]
    assert kept.doubt >= 0 and kept.uncertainty.shape == coarse.shape
    free = refiner.refine_grid(image01, coarse, RefineParams(steps=2, leave_alone=False))
    assert not free.left_alone and not np.array_equal(free.probs, coarse)
    assert free.decision == "refined"
    refiner.auto = replace(refiner.auto, max_doubt=float("inf"))
    assert not refiner.refine_grid(image01, coarse, RefineParams(steps=2)).left_alone


def test_keep_input_returns_the_input_with_the_refiners_uncertainty_at_the_probe(inputs):
    """``keep_input`` (the litemedsam-only box engine): the mask comes back as it came, the
    refiner ran at the probe strength for its uncertainty, whatever the strength asked."""
    from medrefine.refine import AutoStrength

    refiner = _refiner()
    image01, coarse = inputs
    refiner.auto = AutoStrength(probe=0.4, edges=(0.5,), strengths=(0.2, 0.6))
    kept = refiner.refine_grid(image01, coarse, RefineParams(steps=2, strength=0.9,
                                                             keep_input=True))
    assert kept.left_alone and np.array_equal(kept.probs, coarse)
    assert kept.decision == "kept: as asked" and kept.strength == 0.0
    assert kept.timesteps[0] == round(0.4 * 999)  # sampled at the probe
    assert kept.uncertainty.shape == coarse.shape and kept.uncertainty.max() > 0
    refined = refiner.refine_grid(image01, coarse, RefineParams(steps=2, strength=0.9))
    assert not np.array_equal(refined.probs, coarse)


def test_own_coarse_masks_use_their_own_calibration(inputs):
    from medrefine.refine import AutoStrength

    refiner = _refiner()
    refiner.auto = AutoStrength(edges=(), strengths=(0.6,))
    refiner.auto_own = AutoStrength(edges=(), strengths=(0.0,))  # keep the coarse model's mask
    params = RefineParams(steps=2, strength="auto")
    given = refiner.refine_grid(*inputs, params)
    own = refiner.refine_grid(*inputs, params, own=True)
    assert given.strength == 0.6 and not given.left_alone
    assert own.strength == 0.0 and own.left_alone and np.array_equal(own.probs, inputs[1])
    assert own.decision == "kept: good as it is" and given.decision == "refined"
    assert own.uncertainty.max() > 0  # refined at the probe strength for its uncertainty
    box = refiner.refine_grid(*inputs, RefineParams(steps=2, strength="auto", leave_alone=False),
                              own=True)
    assert not box.left_alone and box.strength == refiner.auto_own.probe  # never kept
