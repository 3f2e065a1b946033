"""The inpainting model's config and loading: ``InpaintNet`` (``inpaint/net.py``, built from the
refiner denoiser's blocks) under a Gaussian DDIM schedule (``medrefine.diffusion``), predicting
x0 (``2 * sigmoid(out) - 1``), and the sampling defaults chosen on the validation split. A
weights file stores this config, so it rebuilds its own model.

* ``x_t``: the noisy X-ray in [-1, 1], 1 channel (what is denoised);
* condition: the masked X-ray in [0, 1] (hole pixels 0), the hole (1 = to fill) and a
  classical pre-fill of the hole (``prefill``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from medrefine.checkpoint import load_into, read_info
from medrefine.diffusion import DiffusionConfig, GaussianDiffusion, build_diffusion
from medrefine.errors import ConfigError, InputError
from medrefine.inpaint.net import InpaintNet, InpaintNetConfig

KIND = "inpaint"
BLENDS = ("hard", "feather", "poisson")
PREFILLS = ("telea", "biharmonic")


@dataclass(frozen=True)
class InpaintDefaults:
    """Sampling defaults stored with the weights (chosen on the validation split)."""

    steps: int = 4
    samples: int = 4
    blend: str = "feather"
    eta: float = 0.0

    def __post_init__(self):
        if self.steps < 1 or self.samples < 1:
            raise ConfigError(f"steps and samples must be >= 1, got {self.steps}, {self.samples}")
        if self.blend not in BLENDS:
            raise ConfigError(f"blend must be one of {BLENDS}, got {self.blend!r}")
        if not 0.0 <= self.eta <= 1.0:
            raise ConfigError(f"eta must be in [0, 1], got {self.eta}")


@dataclass(frozen=True)
class InpaintModelConfig:
    """size: the square working grid (the model sees the X-ray resized to size x size);
    prefill: the classical fill the net corrects (``telea``, or ``biharmonic``, the stronger on
    large holes: an untrained net returns it, so training starts from it)."""

    size: int = 256
    prefill: str = "telea"
    net: InpaintNetConfig = field(default_factory=InpaintNetConfig)
    diffusion: DiffusionConfig = field(default_factory=lambda: DiffusionConfig(
        kind="gaussian", prediction="x0", schedule="cosine"))
    defaults: InpaintDefaults = field(default_factory=InpaintDefaults)

    def __post_init__(self):
        if self.size < 32 or self.size % (8 * self.net.patch):
            raise ConfigError(f"inpaint size must be a multiple of {8 * self.net.patch} and "
                              f">= 32, got {self.size}")
        if self.diffusion.kind != "gaussian" or self.diffusion.prediction != "x0":
            raise ConfigError("inpainting uses Gaussian diffusion with x0 prediction")
        if self.prefill not in PREFILLS:
            raise ConfigError(f"inpaint prefill must be one of {PREFILLS}, got {self.prefill!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> InpaintModelConfig:
        unknown = set(data) - {"size", "prefill", "net", "diffusion", "defaults"}
        if unknown:
            raise ConfigError(f"unknown inpaint model config keys {sorted(unknown)}")
        return cls(size=int(data.get("size", 256)), prefill=str(data.get("prefill", "telea")),
                   net=InpaintNetConfig.from_dict(data["net"]),
                   diffusion=DiffusionConfig.from_dict(data["diffusion"]),
                   defaults=InpaintDefaults(**data.get("defaults", {})))


def build_model(cfg: InpaintModelConfig) -> InpaintNet:
    return InpaintNet(cfg.net)


def build_schedule(cfg: InpaintModelConfig) -> GaussianDiffusion:
    return build_diffusion(cfg.diffusion)


def weights_info(cfg: InpaintModelConfig, extra: dict | None = None) -> dict:
    return {"kind": KIND, "model": cfg.to_dict(), **(extra or {})}


def load_inpainter(path: str | Path) -> tuple[InpaintNet, InpaintModelConfig, dict]:
    """(model in eval mode, its config, the stored info) from a weights file."""
    info = read_info(path)
    if info.get("kind") != KIND:
        raise InputError(f"{path}: not an inpainting weights file (kind "
                         f"{info.get('kind')!r}); pass weights written by the inpaint trainer")
    try:
        cfg = InpaintModelConfig.from_dict(info["model"])
    except (KeyError, TypeError, ConfigError) as err:
        raise InputError(f"{path}: the stored inpainting config is unusable ({err})") from err
    model = load_into(build_model(cfg), path).eval()
    return model, cfg, info


def prefill(image01: np.ndarray, hole: np.ndarray, method: str = "telea") -> np.ndarray:
    """The classical fill the net corrects, on a float32 (H, W) image in [0, 1] with a 0/1
    hole: OpenCV Telea (radius 3), or scikit-image's biharmonic fill (tens of ms on the 256
    grid); known pixels are returned unchanged."""
    if method == "biharmonic":
        from skimage.restoration import inpaint_biharmonic

        filled = inpaint_biharmonic(image01.astype(np.float64), hole > 0)
        return np.where(hole > 0, np.clip(filled, 0.0, 1.0), image01).astype(np.float32)
    if method != "telea":
        raise ConfigError(f"unknown inpaint prefill {method!r}; use one of {PREFILLS}")
    # OpenCV's Telea works on 8/16-bit images (its float32 path returns garbage): 16-bit here
    image16 = np.round(np.clip(image01, 0.0, 1.0) * 65535).astype(np.uint16)
    filled = cv2.inpaint(image16, hole.astype(np.uint8), 3, cv2.INPAINT_TELEA)
    out = filled.astype(np.float32) / 65535
    return np.where(hole > 0, out, image01).astype(np.float32)


def to_unit(image: np.ndarray, hole: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(image01, lo, hi): a raw 2D image scaled to [0, 1] by the min and max of its known
    pixels (outside ``hole``), so known pixels map back exactly: ``image01 * (hi - lo) + lo``."""
    known = image[hole == 0] if (hole == 0).any() else image.ravel()
    lo, hi = float(known.min()), float(known.max())
    scale = hi - lo if hi > lo else 1.0
    return np.clip((image.astype(np.float32) - lo) / scale, 0.0, 1.0), lo, lo + scale
