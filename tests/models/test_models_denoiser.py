"""The conditional denoiser: shapes, condition broadcasting, gradient flow, config checks."""

from __future__ import annotations

import pytest
import torch

from medrefine.errors import ConfigError
from medrefine.models.denoiser import Denoiser, DenoiserConfig, timestep_embedding

TINY = {"encoder": "scratch", "widths": (8, 8, 8, 8), "attention": False, "time_dim": 16}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"image_channels": 1, **TINY},
        {"image_channels": 3, **TINY, "use_coarse": False},
        {"image_channels": 3, **{**TINY, "attention": True}},
        # every parameter must get a gradient: DDP (no find_unused_parameters) needs it
        {"image_channels": 1, **{**TINY, "encoder": "efficientnet_lite0"}},
    ],
    ids=["gray", "no_coarse", "attention", "efficientnet"],
)
def test_forward_backward(kwargs):
    torch.manual_seed(0)
    cfg = DenoiserConfig(**kwargs)
    model = Denoiser(cfg).train()
    s = 64 if cfg.encoder == "efficientnet_lite0" else 32
    image01 = torch.rand(2, cfg.image_channels, s, s)
    coarse = torch.rand(2, 1, s, s)
    x_t = torch.randn(2, 1, s, s)
    t = torch.tensor([0, 999])
    out = model(x_t, t, model.encode_condition(image01, coarse))
    assert out.shape == (2, 1, s, s) and torch.isfinite(out).all()
    (out * torch.randn_like(out)).sum().backward()
    dead = [k for k, p in model.named_parameters() if p.grad is None]
    assert not dead, f"parameters without gradient: {dead[:5]}"
    assert next(model.parameters()).grad.abs().sum() > 0


def test_one_condition_broadcasts_over_samples():
    torch.manual_seed(0)
    model = Denoiser(DenoiserConfig(image_channels=1, **TINY)).eval()
    image01, coarse = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    x_t = torch.randn(3, 1, 32, 32)
    t = torch.full((3,), 10)
    with torch.no_grad():
        batched = model(x_t, t, model.encode_condition(image01, coarse))
        one = [
            model(x_t[i : i + 1], t[:1], model.encode_condition(image01, coarse)) for i in range(3)
        ]
    torch.testing.assert_close(batched, torch.cat(one), rtol=1e-5, atol=1e-5)


def test_output_depends_on_timestep():
    torch.manual_seed(0)
    model = Denoiser(DenoiserConfig(image_channels=1, **TINY)).eval()
    cond = model.encode_condition(torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32))
    x_t = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        a, b = model(x_t, torch.tensor([5]), cond), model(x_t, torch.tensor([500]), cond)
    assert not torch.allclose(a, b)


def test_timestep_embedding():
    emb = timestep_embedding(torch.tensor([0, 1, 999]), 16)
    assert emb.shape == (3, 16)
    torch.testing.assert_close(emb[0], torch.cat([torch.ones(8), torch.zeros(8)]))
    assert emb.abs().max() <= 1.0


@pytest.mark.parametrize("kwargs", [{"encoder": "resnet"}, {"widths": (8, 8, 8)}, {"patch": 4}])
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ConfigError):
        DenoiserConfig(**kwargs)


def test_config_dict_round_trip():
    cfg = DenoiserConfig(**TINY)
    data = {**cfg.to_dict(), "widths": [8, 8, 8, 8]}
    assert DenoiserConfig.from_dict(data) == cfg
    with pytest.raises(ConfigError, match="unknown"):
        DenoiserConfig.from_dict({**data, "depth": 3})


def test_efficientnet_condition_features_and_shapes():
    """The efficientnet-conditioned denoiser still produces full-resolution output."""
    torch.manual_seed(0)
    model = Denoiser(DenoiserConfig(image_channels=3, **{**TINY, "encoder": "efficientnet_lite0"}))
    model.eval()
    image01, coarse = torch.rand(1, 3, 64, 64), torch.rand(1, 1, 64, 64)
    full, feats = model.encode_condition(image01, coarse)
    assert full.shape == (1, 4 * 4, 32, 32)  # (3 image + 1 coarse) channels x 2x2 patch
    assert [f.shape[-1] for f in feats] == [32, 16, 8, 4]
    assert [f.shape[1] for f in feats] == [c + 1 for c in (16, 24, 40, 112)]
    with torch.no_grad():
        out = model(torch.randn(2, 1, 64, 64), torch.tensor([3, 7]), (full, feats))
    assert out.shape == (2, 1, 64, 64)


def test_residual_denoiser_starts_as_the_identity_on_the_coarse_mask():
    torch.manual_seed(0)
    model = Denoiser(DenoiserConfig(**TINY, residual=True)).eval()
    image01, coarse = torch.rand(2, 3, 32, 32), torch.rand(2, 1, 32, 32).clamp(0.01, 0.99)
    out = model(torch.randn(2, 1, 32, 32), torch.tensor([3, 700]),
                model.encode_condition(image01, coarse))
    torch.testing.assert_close(torch.sigmoid(out), coarse, atol=1e-4, rtol=0)


def test_residual_needs_the_coarse_mask_and_x0_prediction():
    from medrefine.diffusion import DiffusionConfig
    from medrefine.errors import ConfigError
    from medrefine.training.refiner import RefinerTrainConfig

    with pytest.raises(ConfigError, match="use_coarse"):
        DenoiserConfig(**TINY, residual=True, use_coarse=False)
    with pytest.raises(ConfigError, match="epsilon"):
        RefinerTrainConfig("d", "o", "c", denoiser=DenoiserConfig(**TINY, residual=True),
                           diffusion=DiffusionConfig(prediction="epsilon"))
