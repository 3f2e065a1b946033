"""CPUNet: the design's attention U-Net (Oktay et al. 2018, "Attention U-Net").

Encoder -> four decoder levels, each gating its skip connection with an attention gate
(MONAI's ``AttentionBlock``) before concatenation. The encoder is a config value:
``scratch`` (the classic double-conv U-Net encoder, widths configurable) or
``efficientnet_lite0``/``1``/``2`` (ImageNet-pretrained, much faster to train on a CPU). With
``attention=False`` it is the plain U-Net. The EfficientNet encoders' finest map is at
stride 2; ``full_res_skip`` adds a light stride-1 stem on the image as the last skip, so
boundaries are decided with full-resolution detail.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medrefine.models.blocks import AttentionBlock, ConvBlock, upsample_to
from medrefine.models.efficientnet import EfficientNetLiteEncoder


class ScratchEncoder(nn.Module):
    """Double-conv blocks with max-pooling; features at strides 1, 2, 4, 8, 16."""

    def __init__(self, in_channels: int, widths: tuple[int, ...]):
        super().__init__()
        chans = (in_channels, *widths)
        self.stages = nn.ModuleList(ConvBlock(chans[i], chans[i + 1]) for i in range(len(widths)))
        self.out_channels = tuple(widths)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i, stage in enumerate(self.stages):
            x = stage(x if i == 0 else F.max_pool2d(x, 2))
            feats.append(x)
        return feats


def build_encoder(encoder: str, in_channels: int, widths: tuple[int, ...], pretrained: bool
                  ) -> nn.Module:
    if encoder == "scratch":
        return ScratchEncoder(in_channels, widths)
    if encoder.startswith("efficientnet_lite"):
        return EfficientNetLiteEncoder(in_channels, pretrained=pretrained,
                                       variant=encoder.removeprefix("efficientnet_"))
    raise ValueError(f"unknown encoder {encoder!r}")


class DecoderBlock(nn.Module):
    """Upsample the deeper map, gate the skip with it, concatenate, double conv."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int, attention: bool):
        super().__init__()
        self.gate = (AttentionBlock(2, f_int=max(skip_ch // 2, 8), f_g=in_ch, f_l=skip_ch)
                     if attention else None)
        self.conv = ConvBlock(in_ch + skip_ch, out_ch)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = upsample_to(x, skip)
        if self.gate is not None:
            skip = self.gate(g=x, x=skip)
        return self.conv(torch.cat([x, skip], dim=1))


class CPUNet(nn.Module):
    """Attention U-Net returning logits (B, out_channels, H, W).

    Args:
        in_channels: image channels (1 gray or 3 RGB), values in [0, 1].
        out_channels: 1 for a binary mask (sigmoid), K >= 2 for K classes incl. background
            (softmax).
        widths: scratch-encoder widths, one per level (5 levels = 4 downsamplings).
        decoder_widths: decoder widths from deep to shallow (4 levels).
        encoder: ``scratch`` or ``efficientnet_lite0``/``lite1``/``lite2``.
        attention: attention gates on the skips (False gives the plain U-Net).
        deep_supervision: in training mode also return auxiliary logits from the two
            coarser decoder levels, upsampled to the input size.
        pretrained: load ImageNet weights into a pretrained-capable encoder.
        full_res_skip: (EfficientNet encoders) a 16-channel stride-1 conv stem on the image,
            gated and concatenated into the last decoder block like any other skip.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 1,
        widths: tuple[int, ...] = (16, 32, 64, 128, 256),
        decoder_widths: tuple[int, ...] = (128, 64, 32, 16),
        encoder: str = "scratch",
        attention: bool = True,
        deep_supervision: bool = False,
        pretrained: bool = False,
        full_res_skip: bool = False,
    ):
        super().__init__()
        self.encoder = build_encoder(encoder, in_channels, tuple(widths), pretrained)
        enc = self.encoder.out_channels  # shallow -> deep, 5 maps
        if len(enc) != 5 or len(decoder_widths) != 4:
            raise ValueError("CPUNet needs 5 encoder levels and 4 decoder widths")
        self.decoder = nn.ModuleList()
        prev = enc[-1]
        for skip_ch, out_ch in zip(reversed(enc[:-1]), decoder_widths, strict=True):
            self.decoder.append(DecoderBlock(prev, skip_ch, out_ch, attention))
            prev = out_ch
        # Encoders whose finest map is at stride 2 need one more full-resolution block.
        # A single light conv keeps its cost below the encoder's; with full_res_skip it is a
        # decoder block fed by a stride-1 stem on the image.
        if full_res_skip and encoder == "scratch":
            raise ValueError("full_res_skip is for encoders whose finest map is at stride 2")
        self.full_res_stem = (ConvBlock(in_channels, 16) if full_res_skip else None)
        if full_res_skip:
            self.full_res = DecoderBlock(prev, 16, 16, attention)
        elif encoder != "scratch":
            self.full_res = nn.Sequential(nn.Conv2d(prev, 16, 3, padding=1, bias=False),
                                          nn.BatchNorm2d(16), nn.ReLU(inplace=True))
        else:
            self.full_res = None
        self.head = nn.Conv2d(16 if self.full_res is not None else prev, out_channels, 1)
        self.deep_supervision = deep_supervision
        self.aux_heads = (nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in decoder_widths[:2])
                          if deep_supervision else None)

    def forward(self, image01: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        size = image01.shape[-2:]
        if size[0] % 32 or size[1] % 32:
            raise ValueError(f"CPUNet input H and W must be multiples of 32, got {tuple(size)}")
        feats = self.encoder(image01)
        x = feats[-1]
        levels = []
        for block, skip in zip(self.decoder, reversed(feats[:-1]), strict=True):
            x = block(x, skip)
            levels.append(x)
        if self.full_res_stem is not None:
            x = self.full_res(x, self.full_res_stem(image01))
        elif self.full_res is not None:
            x = self.full_res(F.interpolate(x, size=size, mode="bilinear", align_corners=False))
        logits = self.head(x)
        if self.training and self.aux_heads is not None:
            aux = [F.interpolate(h(lv), size=size, mode="bilinear", align_corners=False)
                   for h, lv in zip(self.aux_heads, levels[:2], strict=True)]
            return [logits, *aux]
        return logits
