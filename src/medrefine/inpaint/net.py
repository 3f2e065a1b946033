"""InpaintNet: a small conditional denoiser for X-ray inpainting on a 2-core CPU.

Built from the refiner denoiser's blocks (``ResBlock`` with FiLM time conditioning,
``SelfAttention``, the sinusoidal ``timestep_embedding``), laid out for images rather than
masks:

* the input is ``x_t`` (noisy image), the masked image, the hole mask and a classical
  pre-fill of the hole (OpenCV Telea or the biharmonic fill, tens of ms); all four enter
  through a lossless space-to-depth stem (``patch`` x ``patch`` pixels become channels), so
  the U-Net works from stride ``patch`` (4: a 256 grid is a 64 x 64 U-Net, cheap on a CPU);
* four levels with explicit encoder/decoder lists, self-attention at the lowest one;
* the head predicts x0 logits as a correction of the pre-fill's logit (an untrained net returns
  the classical fill, training learns what the pre-fill gets wrong), then a small
  full-resolution conv smooths the pixel-shuffle's patch seams using the known pixels around them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from medrefine.errors import ConfigError
from medrefine.models.denoiser import ResBlock, SelfAttention, timestep_embedding

IN_CHANNELS = 4  # x_t, masked image, hole, pre-fill


@dataclass(frozen=True)
class InpaintNetConfig:
    """widths: U-Net widths at strides patch, 2*patch, 4*patch, 8*patch; patch: 2 or 4."""

    widths: tuple[int, ...] = (32, 64, 96, 128)
    patch: int = 4
    time_dim: int = 64
    attention: bool = True
    refine_channels: int = 8

    def __post_init__(self):
        if len(self.widths) != 4 or min(self.widths) < 8:
            raise ConfigError(f"inpaint net widths needs 4 values >= 8, got {self.widths}")
        if self.patch not in (2, 4):
            raise ConfigError(f"inpaint net patch must be 2 or 4, got {self.patch}")
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> InpaintNetConfig:
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown inpaint net config keys {sorted(unknown)}")
        return cls(**data)


class InpaintNet(nn.Module):
    def __init__(self, cfg: InpaintNetConfig):
        super().__init__()
        self.cfg = cfg
        w, p, td = cfg.widths, cfg.patch, cfg.time_dim
        self.time_mlp = nn.Sequential(nn.Linear(td, td * 2), nn.SiLU(), nn.Linear(td * 2, td))
        self.stem = nn.Conv2d(IN_CHANNELS * p * p, w[0], 3, padding=1)
        self.down = nn.ModuleList(
            nn.Conv2d(w[i - 1], w[i], 3, stride=2, padding=1) if i else nn.Identity()
            for i in range(4))
        self.enc = nn.ModuleList(ResBlock(w[i], w[i], td) for i in range(4))
        self.mid_attn = SelfAttention(w[3]) if cfg.attention else nn.Identity()
        self.mid = ResBlock(w[3], w[3], td)
        self.dec = nn.ModuleList(ResBlock(w[i + 1] + w[i], w[i], td) for i in reversed(range(3)))
        self.head = nn.Conv2d(w[0], p * p, 3, padding=1)  # pixel shuffle -> 1 channel
        r = cfg.refine_channels
        self.smooth = nn.Sequential(nn.Conv2d(4, r, 3, padding=1), nn.SiLU(),
                                    nn.Conv2d(r, 1, 3, padding=1))
        for layer in (self.head, self.smooth[-1]):  # start as the pre-fill
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, masked01: torch.Tensor,
                hole: torch.Tensor, prefill01: torch.Tensor) -> torch.Tensor:
        """x_t in [-1, 1] and masked01, hole, prefill01 in [0, 1], all (B, 1, H, W) with H, W
        multiples of 8 * patch; t (B,) ints. Returns x0 logits (B, 1, H, W)."""
        p = self.cfg.patch
        temb = self.time_mlp(timestep_embedding(t, self.cfg.time_dim))
        inputs = torch.cat([x_t, masked01, hole, prefill01], 1)  # (B, 4, H, W)
        h = self.stem(F.pixel_unshuffle(inputs, p))
        skips = []
        for down, block in zip(self.down, self.enc, strict=True):
            h = block(down(h), temb)
            skips.append(h)
        h = self.mid(self.mid_attn(h), temb)
        for block, skip in zip(self.dec, reversed(skips[:-1]), strict=True):
            h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = block(torch.cat([h, skip], 1), temb)
        prior = torch.logit(prefill01.clamp(1e-3, 1 - 1e-3))
        logits = prior + F.pixel_shuffle(self.head(h), p)
        smooth_in = torch.cat([torch.sigmoid(logits), masked01, hole, x_t], 1)
        return logits + self.smooth(smooth_in) * hole
