"""Intensity normalisation, CT windowing, CLAHE, denoising, channel conversion and resizing.

Everything here works on channel-first float32 arrays ``(C, H, W)``. Outputs of
``normalize_intensity`` lie in ``[0, 1]`` (``image01``). ``to_grid``/``from_grid`` map between the
original pixel grid and the model grid and are exact inverses in geometry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from medrefine.errors import ConfigError, InputError

# Window presets (level, width) in HU, as radiology viewers name them.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (40.0, 400.0),
    "soft_tissue": (50.0, 350.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "liver": (60.0, 160.0),
    "abdomen": (40.0, 400.0),
}

NormMethod = Literal["auto", "minmax", "percentile", "zscore", "window", "none", "minmax-clahe"]
DenoiseMethod = Literal["none", "gaussian", "median", "bilateral", "nlmeans"]
ResizeMode = Literal["stretch", "pad"]


@dataclass(frozen=True)
class PreprocessConfig:
    """How an image becomes model input.

    Attributes:
        size: model grid (H, W).
        channels: 1 (gray) or 3 (RGB) channels the model expects.
        norm: intensity normalisation; ``auto`` divides 8-bit data by 255 and uses the
            0.5/99.5 percentiles for anything else (16-bit, float, HU). ``minmax-clahe``:
            for models trained on slices another tool already made 8-bit by min-max and CLAHE
            (covid_ct_lung_infection_ma): 8-bit input is taken as it is (divided by 255),
            anything else (CT in HU, 16-bit) gets that recipe, min-max of the slice then
            CLAHE at ``clahe_clip``, so it reaches the model as the training slices did.
        percentiles: low/high percentiles for ``percentile``.
        window: CT window preset name or (level, width) for ``norm="window"``.
        clahe: apply CLAHE (contrast-limited adaptive histogram equalisation).
        clahe_clip: CLAHE clip limit.
        denoise: denoising filter applied after normalisation.
        resize: ``stretch`` to the grid or ``pad`` (letterbox, keeps the aspect ratio).
    """

    size: tuple[int, int] = (256, 256)
    channels: int = 3
    norm: NormMethod = "auto"
    percentiles: tuple[float, float] = (0.5, 99.5)
    window: str | tuple[float, float] | None = None
    clahe: bool = False
    clahe_clip: float = 2.0
    denoise: DenoiseMethod = "none"
    resize: ResizeMode = "stretch"

    def __post_init__(self):
        if len(self.size) != 2 or min(self.size) < 16:
            raise ConfigError(f"preprocess.size must be (H, W) >= 16, got {self.size}")
        if self.channels not in (1, 3):
            raise ConfigError(f"preprocess.channels must be 1 or 3, got {self.channels}")
        if self.norm not in ("auto", "minmax", "percentile", "zscore", "window", "none",
                             "minmax-clahe"):
            raise ConfigError(f"unknown preprocess.norm {self.norm!r}")
        if self.norm == "window" and self.window is None:
            raise ConfigError("preprocess.norm='window' needs preprocess.window (a preset name "
                              f"from {sorted(CT_WINDOWS)} or (level, width))")
        if isinstance(self.window, str) and self.window not in CT_WINDOWS:
            raise ConfigError(f"unknown CT window {self.window!r}; choose from "
                              f"{sorted(CT_WINDOWS)}")
        if self.denoise not in ("none", "gaussian", "median", "bilateral", "nlmeans"):
            raise ConfigError(f"unknown preprocess.denoise {self.denoise!r}")
        if self.resize not in ("stretch", "pad"):
            raise ConfigError(f"unknown preprocess.resize {self.resize!r}")
        lo, hi = self.percentiles
        if not 0 <= lo < hi <= 100:
            raise ConfigError(f"preprocess.percentiles must satisfy 0 <= lo < hi <= 100, got "
                              f"{self.percentiles}")


@dataclass(frozen=True)
class GridInfo:
    """What ``from_grid`` needs to map model-grid arrays back to the original pixels."""

    original_size: tuple[int, int]  # (H, W)
    grid_size: tuple[int, int]
    mode: ResizeMode
    box: tuple[int, int, int, int]  # (top, left, height, width) of the image inside the grid


# ---------------------------------------------------------------- channels and intensities
def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """Convert (C, H, W) to 1 (luminance) or 3 (RGB) channels; RGBA loses its alpha."""
    c = image.shape[0]
    if c == 4 or c == 2:  # RGBA / gray+alpha: drop alpha
        image = image[:-1]
        c -= 1
    if c == channels:
        return image
    if channels == 3 and c == 1:
        return np.repeat(image, 3, axis=0)
    if channels == 1 and c == 3:
        w = np.array([0.299, 0.587, 0.114], np.float32)[:, None, None]
        return (image * w).sum(0, keepdims=True, dtype=np.float32)
    raise InputError(f"cannot convert a {c}-channel image to {channels} channels")


def normalize_intensity(
    image: np.ndarray,
    method: NormMethod = "auto",
    *,
    source_dtype: str = "float32",
    percentiles: tuple[float, float] = (0.5, 99.5),
    window: str | tuple[float, float] | None = None,
) -> np.ndarray:
    """Map raw intensities to [0, 1] (z-score is squashed by a logistic so it fits too)."""
    image = image.astype(np.float32, copy=False)
    if method == "auto":
        method = "none" if source_dtype in ("uint8", "bool") else "percentile"
        if method == "none":
            return np.clip(image / 255.0, 0.0, 1.0)
    if method == "none":
        return np.clip(image, 0.0, 1.0)
    if method == "window":
        level, width = CT_WINDOWS[window] if isinstance(window, str) else window
        lo, hi = level - width / 2, level + width / 2
    elif method == "minmax":
        lo, hi = float(image.min()), float(image.max())
    elif method == "percentile":
        lo, hi = (float(v) for v in np.percentile(image, percentiles))
    elif method == "zscore":
        std = float(image.std())
        z = (image - float(image.mean())) / (std if std > 0 else 1.0)
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)
    else:
        raise ConfigError(f"unknown normalisation {method!r}")
    if hi <= lo:  # constant image: map to 0 rather than divide by zero
        return np.zeros_like(image)
    return np.clip((image - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def clahe(image01: np.ndarray, clip_limit: float = 2.0, tiles: int = 8) -> np.ndarray:
    """CLAHE on each channel (on the L channel of Lab for RGB, so colours don't shift)."""
    op = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tiles, tiles))
    u8 = _to_u8(image01)
    if image01.shape[0] == 3:
        lab = cv2.cvtColor(np.moveaxis(u8, 0, -1), cv2.COLOR_RGB2LAB)
        lab[..., 0] = op.apply(lab[..., 0])
        out = np.moveaxis(cv2.cvtColor(lab, cv2.COLOR_LAB2RGB), -1, 0)
    else:
        out = np.stack([op.apply(ch) for ch in u8])
    return out.astype(np.float32) / 255.0


def denoise(image01: np.ndarray, method: DenoiseMethod = "gaussian", strength: float = 1.0
            ) -> np.ndarray:
    """Gaussian, median, bilateral or non-local-means denoising of a [0, 1] image."""
    if method == "none":
        return image01
    hwc = np.ascontiguousarray(np.moveaxis(image01, 0, -1))
    if method == "gaussian":
        out = cv2.GaussianBlur(hwc, (0, 0), sigmaX=strength)
    elif method == "median":
        k = max(3, int(2 * round(strength) + 1))
        out = np.moveaxis(
            np.stack([cv2.medianBlur(_to_u8(c[None])[0], k) for c in image01]), 0, -1
        ).astype(np.float32) / 255.0
    elif method == "bilateral":
        out = cv2.bilateralFilter(hwc, d=5, sigmaColor=0.1 * strength, sigmaSpace=5)
    elif method == "nlmeans":
        u8 = np.moveaxis(_to_u8(image01), 0, -1)
        h = 10 * strength
        out = (cv2.fastNlMeansDenoisingColored(u8, None, h, h) if u8.shape[-1] == 3
               else cv2.fastNlMeansDenoising(u8, None, h)).astype(np.float32) / 255.0
    else:
        raise ConfigError(f"unknown denoising method {method!r}")
    if out.ndim == 2:
        out = out[..., None]
    return np.ascontiguousarray(np.moveaxis(out, -1, 0), dtype=np.float32)


def _to_u8(image01: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image01 * 255.0), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- grid mapping
def to_grid(image: np.ndarray, size: tuple[int, int], mode: ResizeMode = "stretch",
            interpolation: int = cv2.INTER_AREA) -> tuple[np.ndarray, GridInfo]:
    """Resize (C, H, W) to the model grid; ``pad`` keeps the aspect ratio (letterbox)."""
    _, h, w = image.shape
    gh, gw = size
    if mode == "stretch":
        box = (0, 0, gh, gw)
    else:
        scale = min(gh / h, gw / w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        box = ((gh - nh) // 2, (gw - nw) // 2, nh, nw)
    top, left, bh, bw = box
    resized = _resize_chw(image, (bh, bw), interpolation)
    if mode == "pad":
        grid = np.zeros((image.shape[0], gh, gw), np.float32)
        grid[:, top:top + bh, left:left + bw] = resized
        resized = grid
    return resized, GridInfo((h, w), (gh, gw), mode, box)


def from_grid(array: np.ndarray, info: GridInfo, interpolation: int = cv2.INTER_LINEAR
              ) -> np.ndarray:
    """Map (C, gh, gw) model-grid values (probabilities, uncertainty) to (C, H, W)."""
    top, left, bh, bw = info.box
    inner = array[:, top:top + bh, left:left + bw]
    return _resize_chw(inner, info.original_size, interpolation)


def _resize_chw(image: np.ndarray, size: tuple[int, int], interpolation: int) -> np.ndarray:
    h, w = size
    if image.shape[1:] == (h, w):
        return image.astype(np.float32, copy=True)
    # INTER_AREA is for shrinking; when enlarging it behaves like nearest, so use linear.
    if interpolation == cv2.INTER_AREA and (h > image.shape[1] or w > image.shape[2]):
        interpolation = cv2.INTER_LINEAR
    # Resizing only averages neighbours, so its result stays within each channel's range; the
    # clip removes the float rounding (a 0/1 mask's area resize gives 1.0000001 at many sizes),
    # which a [0, 1] probability check downstream would take for the user's error.
    out = [np.clip(cv2.resize(c, (w, h), interpolation=interpolation), c.min(), c.max())
           for c in (np.ascontiguousarray(ch, np.float32) for ch in image)]
    return np.stack(out).astype(np.float32)


# ---------------------------------------------------------------- the whole chain
def preprocess(image: np.ndarray, cfg: PreprocessConfig, source_dtype: str = "float32"
               ) -> tuple[np.ndarray, GridInfo]:
    """Raw (C, H, W) -> image01 (cfg.channels, *cfg.size) in [0, 1] plus the grid mapping."""
    return to_grid(intensities01(image, cfg, source_dtype), cfg.size, cfg.resize)


def intensities01(image: np.ndarray, cfg: PreprocessConfig, source_dtype: str = "float32"
                  ) -> np.ndarray:
    """``preprocess`` on the image's own grid: raw (C, H, W) -> (cfg.channels, H, W) in [0, 1]
    (normalised, channels, CLAHE and denoising as ``cfg`` says), not yet resized. Parts of an
    image (``medrefine.tiling``) are cut from this, so they share the whole image's
    normalisation."""
    if image.ndim != 3:
        raise InputError(f"expected a 2D image (C, H, W), got shape {image.shape}; "
                         "volumes are segmented slice by slice")
    norm, source_made = cfg.norm, False
    if norm == "minmax-clahe":
        source_made = source_dtype not in ("uint8", "bool")
        norm = "minmax" if source_made else "auto"
        if source_made and float(image.min()) < -1024:  # CT padding outside the scan's field
            image = np.maximum(image, -1024.0)  # of view is not tissue: air is the minimum
    image01 = normalize_intensity(image, norm, source_dtype=source_dtype,
                                  percentiles=cfg.percentiles, window=cfg.window)
    image01 = to_channels(image01, cfg.channels)
    if cfg.clahe or source_made:
        image01 = clahe(image01, cfg.clahe_clip)
    if cfg.denoise != "none":
        image01 = denoise(image01, cfg.denoise)
    return image01
