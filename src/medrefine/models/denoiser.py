"""The diffusion refiner's denoiser: a small conditional U-Net for 2-core CPUs.

Split in two so sampling is cheap:

* ``encode_condition(image01, coarse_probs)`` runs once per image: an image encoder
  (ImageNet EfficientNet-Lite0, or a small scratch conv encoder) gives features at strides
  2, 4, 8 and 16, each joined with the coarse mask pooled to that stride (SegRefiner feeds
  image + coarse mask; here they enter at every scale).
* ``forward(x_t, t, cond)`` runs at every denoising step: the noisy mask enters through a
  lossless space-to-depth stem (``patch`` x ``patch`` pixels become channels), so the U-Net works
  from stride ``patch`` and the output is reassembled at full resolution by pixel shuffle.
  Residual blocks take a sinusoidal timestep embedding as FiLM scale/shift (Ho et al. 2020;
  Dhariwal & Nichol 2021). Optional self-attention at the lowest level only.

Output: one channel, x0 logits or epsilon (the diffusion's ``prediction``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from medrefine.errors import ConfigError
from medrefine.models.cpunet import ScratchEncoder
from medrefine.models.efficientnet import EfficientNetLite0Encoder


@dataclass(frozen=True)
class DenoiserConfig:
    """Attributes:
    image_channels: 1 or 3.
    encoder: image encoder, ``efficientnet_lite0`` or ``scratch``.
    widths: U-Net widths at strides patch, 2*patch, 4*patch, 8*patch.
    patch: space-to-depth factor of the stem (2 = the U-Net starts at half resolution).
    time_dim: timestep embedding size.
    use_coarse: condition on the coarse mask as well as the image.
    residual: add the coarse mask's logit to the output (x0-prediction only), so an untrained
        refiner returns the coarse mask and training learns only the corrections.
    attention: self-attention at the lowest level.
    """

    image_channels: int = 3
    encoder: str = "efficientnet_lite0"
    widths: tuple[int, ...] = (24, 40, 64, 96)
    patch: int = 2
    time_dim: int = 64
    use_coarse: bool = True
    residual: bool = False
    attention: bool = True

    def __post_init__(self):
        if self.encoder not in ("efficientnet_lite0", "scratch"):
            raise ConfigError(f"unknown denoiser encoder {self.encoder!r}")
        if len(self.widths) != 4:
            raise ConfigError(f"denoiser widths needs 4 values, got {self.widths}")
        if self.residual and not self.use_coarse:
            raise ConfigError("denoiser residual=True needs use_coarse=True")
        if self.patch != 2:
            raise ConfigError("denoiser patch must be 2 (the encoder's first stride)")
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DenoiserConfig:
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown denoiser config keys {sorted(unknown)}")
        return cls(**data)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (Vaswani et al. 2017), (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, ch // 4), ch)


class ResBlock(nn.Module):
    """conv -> norm -> SiLU, FiLM by the time embedding, conv -> norm -> SiLU, plus skip."""

    def __init__(self, in_ch: int, out_ch: int, time_dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm1 = _norm(out_ch)
        self.film = nn.Linear(time_dim, 2 * out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.norm2 = _norm(out_ch)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.norm1(self.conv1(x)))
        scale, shift = self.film(temb)[:, :, None, None].chunk(2, dim=1)
        h = h * (1 + scale) + shift
        h = F.silu(self.norm2(self.conv2(h)))
        return h + self.skip(x)


class SelfAttention(nn.Module):
    def __init__(self, ch: int, heads: int = 4):
        super().__init__()
        self.norm = _norm(ch)
        self.attn = nn.MultiheadAttention(ch, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        seq = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        out, _ = self.attn(seq, seq, seq, need_weights=False)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class ConditionEncoder(nn.Module):
    """image01 (B, C, H, W) + coarse probs (B, 1, H, W) -> 4 maps at strides 2, 4, 8, 16."""

    def __init__(self, cfg: DenoiserConfig, pretrained: bool = False):
        super().__init__()
        self.use_coarse = cfg.use_coarse
        extra = 1 if cfg.use_coarse else 0
        if cfg.encoder == "efficientnet_lite0":
            self.backbone = EfficientNetLite0Encoder(cfg.image_channels, pretrained=pretrained,
                                                     levels=4)
            chans = self.backbone.out_channels  # strides 2, 4, 8, 16
        else:
            self.backbone = ScratchEncoder(cfg.image_channels + extra, (16, 24, 32, 48, 64))
            chans = self.backbone.out_channels[1:]
        self.encoder_kind = cfg.encoder
        self.out_channels = tuple(c + extra for c in chans)

    def forward(self, image01: torch.Tensor, coarse: torch.Tensor) -> list[torch.Tensor]:
        if self.encoder_kind == "efficientnet_lite0":
            feats = self.backbone(image01)
        else:
            x = torch.cat([image01, coarse], 1) if self.use_coarse else image01
            feats = self.backbone(x)[1:]
        if not self.use_coarse:
            return feats
        return [torch.cat([f, F.adaptive_avg_pool2d(coarse, f.shape[-2:])], 1) for f in feats]


class Denoiser(nn.Module):
    def __init__(self, cfg: DenoiserConfig, pretrained: bool = False):
        super().__init__()
        self.cfg = cfg
        w, p, td = cfg.widths, cfg.patch, cfg.time_dim
        self.condition = ConditionEncoder(cfg, pretrained)
        cc = self.condition.out_channels
        self.time_mlp = nn.Sequential(nn.Linear(td, td * 2), nn.SiLU(), nn.Linear(td * 2, td))
        # stem: x_t (1) + image (C) + coarse (1), each unshuffled p x p -> channels
        stem_in = (1 + cfg.image_channels + int(cfg.use_coarse)) * p * p
        self.stem = nn.Conv2d(stem_in, w[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.enc = nn.ModuleList()
        for i in range(4):
            self.down.append(nn.Conv2d(w[i - 1], w[i], 3, stride=2, padding=1) if i else
                             nn.Identity())
            self.enc.append(ResBlock(w[i] + cc[i], w[i], td))
        self.mid_attn = SelfAttention(w[3]) if cfg.attention else nn.Identity()
        self.mid = ResBlock(w[3], w[3], td)
        self.dec = nn.ModuleList(ResBlock(w[i + 1] + w[i], w[i], td) for i in reversed(range(3)))
        self.head = nn.Conv2d(w[0], p * p, 3, padding=1)  # pixel shuffle -> 1 channel
        if cfg.residual:  # start as the identity on the coarse mask
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def encode_condition(self, image01: torch.Tensor, coarse: torch.Tensor
                         ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Per-image work: (full-resolution condition, multi-scale features)."""
        full = torch.cat([image01, coarse], 1) if self.cfg.use_coarse else image01
        return F.pixel_unshuffle(full, self.cfg.patch), self.condition(image01, coarse)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor,
                cond: tuple[torch.Tensor, list[torch.Tensor]]) -> torch.Tensor:
        """x_t (B, 1, H, W), t (B,) ints, cond from ``encode_condition`` (batch B or 1)."""
        full, feats = cond
        b = x_t.shape[0]
        if full.shape[0] != b:  # one image, several samples: broadcast the condition
            full = full.expand(b, -1, -1, -1)
            feats = [f.expand(b, -1, -1, -1) for f in feats]
        temb = self.time_mlp(timestep_embedding(t, self.cfg.time_dim))
        h = self.stem(torch.cat([F.pixel_unshuffle(x_t, self.cfg.patch), full], 1))
        skips = []
        for i in range(4):
            h = self.enc[i](torch.cat([self.down[i](h), feats[i]], 1), temb)
            skips.append(h)
        h = self.mid(self.mid_attn(h), temb)
        for block, skip in zip(self.dec, reversed(skips[:-1]), strict=True):
            h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = block(torch.cat([h, skip], 1), temb)
        out = F.pixel_shuffle(self.head(h), self.cfg.patch)
        if self.cfg.residual:  # the coarse mask is the last channel group of ``full``
            p2 = self.cfg.patch**2
            coarse = F.pixel_shuffle(full[:, -p2:], self.cfg.patch).clamp(1e-4, 1 - 1e-4)
            out = out + torch.logit(coarse)
        return out
