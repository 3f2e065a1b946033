"""Small building blocks shared by the segmentation models."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.nets.attentionunet import AttentionBlock
from torch import nn

__all__ = ["AttentionBlock", "ConvBlock", "fuse_conv_bn", "upsample_to"]


class ConvBlock(nn.Sequential):
    """Two 3x3 conv -> BatchNorm -> ReLU layers (the U-Net double conv)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__(
            nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )


def upsample_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Bilinear upsampling of ``x`` to the spatial size of ``ref``."""
    if x.shape[-2:] == ref.shape[-2:]:
        return x
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)


def fuse_conv_bn(model: nn.Module) -> nn.Module:
    """Fold each eval-mode BatchNorm into the convolution just before it, in place, for
    inference only: the same arithmetic up to float rounding, one op fewer per layer (the
    coarse model and the refiner's image encoder run ~10-15% faster on a CPU).

    Pairs come from ``nn.Sequential`` containers (a Conv2d directly followed by a BatchNorm2d)
    and from modules that name theirs in a ``conv_bn_pairs`` class attribute. The result can no
    longer load or save the original state dict: fuse a model loaded for inference, never one
    that is trained or saved afterwards. Returns ``model``, in eval mode."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model.eval()
    for module in list(model.modules()):
        pairs = list(getattr(module, "conv_bn_pairs", ()))
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            pairs += list(zip(names, names[1:], strict=False))
        for conv_name, bn_name in pairs:
            conv, bn = module._modules.get(conv_name), module._modules.get(bn_name)
            if type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d:
                module._modules[conv_name] = fuse_conv_bn_eval(conv, bn)
                module._modules[bn_name] = nn.Identity()
    return model
