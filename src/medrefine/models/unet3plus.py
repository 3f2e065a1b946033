"""UNet 3+ (Huang et al. 2020): full-scale skip connections.

Each decoder level gathers every encoder map shallower than it (max-pooled down), itself,
and every decoder map deeper than it (upsampled), each projected to ``cat_channels``, and fuses
them with one 3x3 conv. Deep supervision returns one logit map per decoder level.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medrefine.models.cpunet import ScratchEncoder


def _cbr(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
                         nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


class UNet3Plus(nn.Module):
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 1,
        widths: tuple[int, ...] = (16, 32, 64, 128, 256),
        cat_channels: int = 16,
        deep_supervision: bool = False,
    ):
        super().__init__()
        self.encoder = ScratchEncoder(in_channels, tuple(widths))
        n = len(widths)
        fused = cat_channels * n
        self.n = n
        # proj[d][s]: source level s (encoder if s <= d, else decoder) -> decoder level d
        self.proj = nn.ModuleList()
        self.fuse = nn.ModuleList()
        for d in range(n - 1):
            srcs = [widths[s] if s <= d else (widths[-1] if s == n - 1 else fused)
                    for s in range(n)]
            self.proj.append(nn.ModuleList(_cbr(c, cat_channels) for c in srcs))
            self.fuse.append(_cbr(fused, fused))
        self.head = nn.Conv2d(fused, out_channels, 1)
        self.deep_supervision = deep_supervision
        self.aux_heads = (nn.ModuleList(nn.Conv2d(fused, out_channels, 1) for _ in range(n - 2))
                          if deep_supervision else None)

    def forward(self, image01: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        size = image01.shape[-2:]
        if size[0] % 16 or size[1] % 16:
            raise ValueError(f"UNet3+ input H and W must be multiples of 16, got {tuple(size)}")
        enc = self.encoder(image01)
        dec: dict[int, torch.Tensor] = {self.n - 1: enc[-1]}
        for d in range(self.n - 2, -1, -1):
            target = enc[d].shape[-2:]
            parts = []
            for s in range(self.n):
                src = enc[s] if s <= d else dec[s]
                if s < d:
                    src = F.max_pool2d(src, 2 ** (d - s))
                elif s > d:
                    src = F.interpolate(src, size=target, mode="bilinear", align_corners=False)
                parts.append(self.proj[d][s](src))
            dec[d] = self.fuse[d](torch.cat(parts, dim=1))
        logits = self.head(dec[0])
        if self.training and self.aux_heads is not None:
            aux = [F.interpolate(h(dec[d]), size=size, mode="bilinear", align_corners=False)
                   for h, d in zip(self.aux_heads, range(1, self.n - 1), strict=True)]
            return [logits, *aux]
        return logits
