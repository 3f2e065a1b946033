"""Folding BatchNorm into convolutions for inference: same outputs, no BatchNorm left."""

from __future__ import annotations

import torch
from torch import nn

from medrefine.models.blocks import fuse_conv_bn
from medrefine.models.denoiser import Denoiser, DenoiserConfig
from medrefine.models.registry import SegModelConfig, build_seg_model


def _randomise_bn(model: nn.Module) -> None:
    """Non-trivial running statistics, so a wrong fold would show."""
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


def _count_bn(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_fused_coarse_model_gives_the_same_output():
    for encoder in ("efficientnet_lite0", "scratch"):
        model = build_seg_model(SegModelConfig(encoder=encoder)).eval()
        _randomise_bn(model)
        x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
        with torch.inference_mode():
            before = model(x)
        bn_before = _count_bn(model)
        fused = fuse_conv_bn(model)
        with torch.inference_mode():
            after = fused(x)
        assert _count_bn(fused) < bn_before / 2, encoder  # most BatchNorms are folded
        torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)


def test_fused_denoiser_gives_the_same_output():
    model = Denoiser(DenoiserConfig(residual=True)).eval()
    _randomise_bn(model)
    for p in model.head.parameters():  # the residual head starts at zero; make it matter
        nn.init.normal_(p, std=0.1)
    image = torch.rand(1, 3, 64, 64)
    coarse = torch.rand(1, 1, 64, 64)
    x_t, t = torch.randn(2, 1, 64, 64), torch.tensor([100, 5])
    with torch.inference_mode():
        before = model(x_t, t, model.encode_condition(image, coarse))
        fused = fuse_conv_bn(model)
        after = fused(x_t, t, fused.encode_condition(image, coarse))
    assert _count_bn(fused) == 0
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)


def test_a_batchnorm_not_after_a_conv_is_left_alone():
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 1), nn.ReLU(), nn.BatchNorm2d(4))
    fuse_conv_bn(model)
    assert isinstance(model[0], nn.BatchNorm2d) and isinstance(model[3], nn.BatchNorm2d)
