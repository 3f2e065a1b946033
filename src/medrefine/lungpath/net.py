"""The DiffSegLung denoiser: a small 2D U-Net on CT patches (epsilon prediction) whose
bottleneck also feeds a projection head for the radiomic distillation (stage 2).

    x_t (B,1,P,P), t -> stem -> [ResBlock, down] x (L-1) -> ResBlock (bottleneck, stride
    2^(L-1)) -> [up, concat skip, ResBlock] x (L-1) -> conv -> epsilon (B,1,P,P)

``encode`` stops at the bottleneck: the features need no decoder (noise to t, one forward
pass of the encoder). The time embedding is sinusoidal (Ho et al. 2020), added in every block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from medrefine.errors import ConfigError


@dataclass(frozen=True)
class NetConfig:
    widths: tuple[int, ...] = (24, 48, 96)
    time_dim: int = 64
    proj_dim: int = 64
    groups: int = 8

    def __post_init__(self):
        if len(self.widths) < 2 or any(w % self.groups for w in self.widths):
            raise ConfigError(
                f"net: need >= 2 widths, each divisible by groups={self.groups}, got {self.widths}"
            )

    @property
    def stride(self) -> int:
        return 2 ** (len(self.widths) - 1)

    @property
    def feature_dim(self) -> int:
        return self.widths[-1]


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None].to(t.device)
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, time_dim: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(min(groups, cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time = nn.Linear(time_dim, cout)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time(temb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip(x)


class LungDenoiser(nn.Module):
    def __init__(self, cfg: NetConfig = NetConfig(), radiomics_dim: int = 34):
        super().__init__()
        self.cfg = cfg
        w, td, g = cfg.widths, cfg.time_dim, cfg.groups
        self.time_mlp = nn.Sequential(nn.Linear(td, td), nn.SiLU(), nn.Linear(td, td))
        self.stem = nn.Conv2d(1, w[0], 3, padding=1)
        self.down = nn.ModuleList()  # encoder: one block per level, then a stride-2 conv
        self.pool = nn.ModuleList()
        for i in range(len(w) - 1):
            self.down.append(ResBlock(w[i], w[i], td, g))
            self.pool.append(nn.Conv2d(w[i], w[i + 1], 3, stride=2, padding=1))
        self.mid = ResBlock(w[-1], w[-1], td, g)  # the bottleneck
        self.up = nn.ModuleList()  # decoder: upsample, concat the skip of that level, block
        for i in range(len(w) - 1, 0, -1):
            self.up.append(ResBlock(w[i] + w[i - 1], w[i - 1], td, g))
        self.out = nn.Sequential(nn.GroupNorm(g, w[0]), nn.SiLU(), nn.Conv2d(w[0], 1, 3, padding=1))
        # stage 2: bottleneck (pooled) -> proj_dim, radiomics (standardised) -> proj_dim
        self.proj = nn.Sequential(
            nn.Linear(w[-1], w[-1]), nn.SiLU(), nn.Linear(w[-1], cfg.proj_dim)
        )
        self.teacher = nn.Sequential(
            nn.Linear(radiomics_dim, 64), nn.SiLU(), nn.Linear(64, cfg.proj_dim)
        )

    def _temb(self, t: torch.Tensor) -> torch.Tensor:
        return self.time_mlp(timestep_embedding(t, self.cfg.time_dim))

    def encode(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Bottleneck features (B, widths[-1], H/stride, W/stride)."""
        temb = self._temb(t)
        h = self.stem(x_t)
        for block, pool in zip(self.down, self.pool, strict=True):
            h = pool(block(h, temb))
        return self.mid(h, temb)

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, radiomics: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(epsilon prediction (B,1,H,W), bottleneck (B,C,H/s,W/s), z, r): with ``radiomics``
        (B, 34) also the projections (B, proj_dim) of the pooled bottleneck and of the
        descriptors for InfoNCE (computed here so DDP sees every parameter in forward)."""
        temb = self._temb(t)
        h = self.stem(x_t)
        skips = []
        for block, pool in zip(self.down, self.pool, strict=True):
            h = block(h, temb)
            skips.append(h)
            h = pool(h)
        bottleneck = self.mid(h, temb)
        h = bottleneck
        for block in self.up:
            skip = skips.pop()
            h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = block(torch.cat([h, skip], dim=1), temb)  # (B, w[i]+w[i-1], ...)
        z = r = None
        if radiomics is not None:
            z, r = self.proj(bottleneck.mean(dim=(2, 3))), self.teacher(radiomics)
        return self.out(h), bottleneck, z, r
