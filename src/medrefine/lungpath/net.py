"""The DiffSegLung denoiser: a small U-Net on CT patches (epsilon prediction) whose
bottleneck also feeds a projection head for the radiomic distillation (stage 2).

    x_t (B,1,P,P), t -> stem -> [ResBlock, down] x (L-1) -> ResBlock (bottleneck, stride
    2^(L-1)) -> [up, concat skip, ResBlock] x (L-1) -> conv -> epsilon (B,1,P,P)

``encode`` stops at the bottleneck: the features need no decoder (noise to t, one forward
pass of the encoder). The time embedding is sinusoidal (Ho et al. 2020), added in every block.

``NetConfig.dims`` 3 (the "3D patches" option) is the same U-Net on (B,1,D,P,P) stacks of
axial slices: Conv3d with 3x3x3 kernels, and the down/upsampling in-plane only (stride
(1,2,2)), so D is kept (CT slices are thick relative to pixels; ``stride`` stays the in-plane
stride). Its GroupNorm normalises each axial slice on its own (``SliceGroupNorm``): z then
enters only through the convolutions, whose reach in z is finite (``z_radius``), so a volume
can be featurised in z-chunks with that many context slices and give the numbers of one pass
over the whole stack (``features.z_chunks``); a norm over D would tie every slice to the
chunk's depth. Weights files written before ``dims`` existed load as 2D.
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
    dims: int = 2  # 2: axial patches (B,1,P,P); 3: slice stacks (B,1,D,P,P), z kept

    def __post_init__(self):
        if self.dims not in (2, 3):
            raise ConfigError(f"net.dims must be 2 or 3, got {self.dims!r}")
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

    @property
    def z_radius(self) -> int:
        """Slices either side that reach a bottleneck cell (0 in 2D): every 3x3x3 conv of the
        encoder adds one (stem, two per ResBlock, the down conv of each level, two in the
        bottleneck block)."""
        return 0 if self.dims == 2 else 1 + 3 * (len(self.widths) - 1) + 2


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None].to(t.device)
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class SliceGroupNorm(nn.GroupNorm):
    """GroupNorm of each axial slice of a (B, C, D, H, W) tensor on its own (statistics over
    C/G x H x W, as the 2D net's), so a slice's output does not depend on how many slices
    are stacked with it. Same parameters (weight, bias) as ``nn.GroupNorm``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, d, h, w = x.shape
        y = super().forward(x.transpose(1, 2).reshape(b * d, c, h, w))
        return y.reshape(b, d, c, h, w).transpose(1, 2)


def _layers(dims: int):
    """(conv class, norm class, down-conv stride) of a 2D or 3D net."""
    if dims == 2:
        return nn.Conv2d, nn.GroupNorm, 2
    return nn.Conv3d, SliceGroupNorm, (1, 2, 2)  # in-plane only: z is kept


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, time_dim: int, groups: int, dims: int = 2):
        super().__init__()
        conv, norm, _ = _layers(dims)
        self.norm1 = norm(min(groups, cin), cin)
        self.conv1 = conv(cin, cout, 3, padding=1)
        self.time = nn.Linear(time_dim, cout)
        self.norm2 = norm(groups, cout)
        self.conv2 = conv(cout, cout, 3, padding=1)
        self.skip = conv(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time(temb)[(...,) + (None,) * (x.ndim - 2)]  # (B, C, 1, 1[, 1])
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip(x)


class LungDenoiser(nn.Module):
    def __init__(self, cfg: NetConfig = NetConfig(), radiomics_dim: int = 34):
        super().__init__()
        self.cfg = cfg
        w, td, g, nd = cfg.widths, cfg.time_dim, cfg.groups, cfg.dims
        conv, norm, down = _layers(nd)
        self.time_mlp = nn.Sequential(nn.Linear(td, td), nn.SiLU(), nn.Linear(td, td))
        self.stem = conv(1, w[0], 3, padding=1)
        self.down = nn.ModuleList()  # encoder: one block per level, then a stride-2 conv
        self.pool = nn.ModuleList()
        for i in range(len(w) - 1):
            self.down.append(ResBlock(w[i], w[i], td, g, nd))
            self.pool.append(conv(w[i], w[i + 1], 3, stride=down, padding=1))
        self.mid = ResBlock(w[-1], w[-1], td, g, nd)  # the bottleneck
        self.up = nn.ModuleList()  # decoder: upsample, concat the skip of that level, block
        for i in range(len(w) - 1, 0, -1):
            self.up.append(ResBlock(w[i] + w[i - 1], w[i - 1], td, g, nd))
        self.out = nn.Sequential(norm(g, w[0]), nn.SiLU(), conv(w[0], 1, 3, padding=1))
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
        """Bottleneck features (B, widths[-1], H/stride, W/stride); 3D: (B, C, D, H/s, W/s)."""
        temb = self._temb(t)
        h = self.stem(x_t)
        for block, pool in zip(self.down, self.pool, strict=True):
            h = pool(block(h, temb))
        return self.mid(h, temb)

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, radiomics: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(epsilon prediction (B,1,H,W), bottleneck (B,C,H/s,W/s), z, r): with ``radiomics``
        (B, 34) also the projections (B, proj_dim) of the bottleneck pooled over all its
        spatial axes and of the descriptors for InfoNCE (computed here so DDP sees every
        parameter in forward). 3D: x_t (B,1,D,H,W), bottleneck (B,C,D,H/s,W/s)."""
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
            h = F.interpolate(h, size=skip.shape[2:], mode="nearest")  # in-plane only in 3D
            h = block(torch.cat([h, skip], dim=1), temb)  # (B, w[i]+w[i-1], ...)
        z = r = None
        if radiomics is not None:
            pooled = bottleneck.mean(dim=tuple(range(2, bottleneck.ndim)))  # (B, C)
            z, r = self.proj(pooled), self.teacher(radiomics)
        return self.out(h), bottleneck, z, r
