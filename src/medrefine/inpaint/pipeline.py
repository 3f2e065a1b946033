"""InpaintingPipeline: fill a masked region of a 2D X-ray with the inpainting diffusion model.

image (raw units, any bit depth) + hole mask (1 = fill)
 -> [0, 1] by the known pixels' range -> the model's grid (area resize; a grid pixel touching
    the hole is a hole pixel) -> the model's classical pre-fill (Telea or biharmonic)
 -> DDIM sampling, samples averaged (``inpaint.sample``) -> back to the input's size (cubic)
 -> seam blend (``inpaint.blend``)
 -> raw units and the input's dtype; the known pixels are the input's own values, bit for bit
    (feather blending aside, which mixes a ring of ``radius`` px outside the hole).

The result is a synthetic image: ``SYNTHETIC_NOTE`` goes with every output."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from medrefine.checkpoint import file_sha256
from medrefine.errors import ConfigError, InputError
from medrefine.inpaint.blend import blend as blend_seam
from medrefine.inpaint.model import BLENDS, load_inpainter, prefill, to_unit
from medrefine.inpaint.sample import sample_fill
from medrefine.presets import DEFAULT_PRESETS, get_preset

SYNTHETIC_NOTE = ("SYNTHETIC IMAGE: regions were filled in by a generative model "
                  "(medrefine inpaint). Not for diagnosis.")


def preset_weights(name: str) -> Path:
    """The weights file of the inpainting preset ``name`` (``medrefine.presets``); a name that
    is not an inpainting preset is a ConfigError naming the choices."""
    return get_preset(name, task="inpainting").weights


@dataclass
class InpaintResult:
    """image: the input (H, W) as given; inpainted: the same shape and dtype; mask: uint8 0/1;
    spread: per-pixel std across samples on the input's grid (0 outside the hole)."""

    image: np.ndarray
    inpainted: np.ndarray
    mask: np.ndarray
    spread: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    params: dict = field(default_factory=dict)


def check_mask(mask: np.ndarray, shape: tuple[int, ...], name: str = "mask") -> np.ndarray:
    """A hole mask as uint8 0/1 of ``shape``; a wrong size, an empty mask or one that leaves
    under ``MIN_KNOWN_FRACTION`` of the image known is an InputError (one line)."""
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[0] == 1:
        mask = mask[0]
    if mask.shape != tuple(shape):
        raise InputError(f"{name}: mask is {'x'.join(map(str, mask.shape))} but the image is "
                         f"{'x'.join(map(str, shape))}; give a mask of the image's size")
    hole = (mask > 0).astype(np.uint8)
    if not hole.any():
        raise InputError(f"{name}: mask is empty (no pixel to fill); mark the region to fill "
                         "with non-zero values")
    if hole.all():
        raise InputError(f"{name}: mask covers the whole image; there is nothing to fill "
                         "from; mark only the region to fill")
    check_known_context(hole, name)
    return hole


# The fill is drawn from what the model sees around the hole: with less of the image known
# there is no anatomy to continue (the hole of a device covers a few percent of an X-ray).
MIN_KNOWN_FRACTION = 0.1


def check_known_context(hole: np.ndarray, name: str = "mask", where: str = "") -> None:
    """InputError (one line) when the hole leaves under ``MIN_KNOWN_FRACTION`` of the image
    known; ``where`` names the grid the check ran on (the model's grid, where a known pixel
    touching the hole counts as hole)."""
    known = 1.0 - float(hole.mean())
    if known < MIN_KNOWN_FRACTION:
        raise InputError(
            f"{name}: the mask leaves {100 * known:.1f}% of the image known{where}; "
            f"inpainting needs at least {100 * MIN_KNOWN_FRACTION:g}% of it outside the hole "
            "to fill from; mark only the region to fill")


class InpaintingPipeline:
    """``InpaintingPipeline(preset="inpaint").run(image, mask)``.

    Args:
        preset: the shipped inpainting model (``inpaint``), unless ``weights`` is given.
        weights: a weights file written by ``medrefine train --stage inpaint``.
        steps, samples, blend: override the defaults stored with the weights.
        seed: the sampling seed (same seed, same output on the same machine).
    """

    def __init__(self, preset: str = DEFAULT_PRESETS["inpainting"],
                 weights: str | Path | None = None, steps: int | None = None,
                 samples: int | None = None, blend: str | None = None, seed: int = 0,
                 eta: float | None = None):
        self.weights = Path(weights) if weights else preset_weights(preset)
        if not self.weights.is_file():
            raise ConfigError(f"{self.weights}: inpainting weights not found")
        self.model, self.cfg, self.info = load_inpainter(self.weights)
        from medrefine.inpaint.model import build_schedule

        self.schedule = build_schedule(self.cfg)
        d = self.cfg.defaults
        self.steps = int(steps or d.steps)
        self.samples = int(samples or d.samples)
        self.blend = blend or d.blend
        self.eta = d.eta if eta is None else float(eta)
        self.seed = int(seed)
        self.preset = None if weights else preset
        if self.steps < 1 or self.samples < 1:
            raise ConfigError(f"steps and samples must be >= 1, got {self.steps}, {self.samples}")
        if self.blend not in BLENDS:
            raise ConfigError(f"blend must be one of {BLENDS}, got {self.blend!r}")

    def params(self) -> dict:
        return {"steps": self.steps, "samples": self.samples, "blend": self.blend,
                "eta": self.eta, "seed": self.seed, "grid": self.cfg.size}

    def provenance(self) -> dict:
        return {"preset": self.preset, "weights": {"inpaint": {
            "path": str(self.weights), "sha256": file_sha256(self.weights)}},
            "params": self.params(), "note": SYNTHETIC_NOTE}

    def run(self, image: np.ndarray | str | Path, mask: np.ndarray | str | Path,
            invert: bool = False) -> InpaintResult:
        """Inpaint a 2D image (H, W) (or (1, H, W)); ``image`` and ``mask`` may be paths.
        ``invert``: the image is stored bright-for-air (DICOM MONOCHROME1); the model sees it
        the usual way round."""
        timings: dict[str, float] = {}
        t = time.perf_counter()
        name = "mask"
        if isinstance(image, str | Path):
            from medrefine.io import read_image

            loaded = read_image(image)
            if loaded.is_volume:
                raise InputError(f"{image}: is a volume; inpainting takes a 2D X-ray")
            image = as_source_dtype(loaded)
        if isinstance(mask, str | Path):
            from medrefine.io import read_mask

            name, mask = str(mask), read_mask(mask)
        image = np.asarray(image)
        if image.ndim == 3:
            if image.shape[0] not in (1, 3):
                raise InputError(f"image has shape {image.shape}; expected (H, W) or (1, H, W)")
            image = image.mean(0) if image.shape[0] == 3 else image[0]
        hole = check_mask(mask, image.shape, name)
        timings["load"] = time.perf_counter() - t

        t = time.perf_counter()
        image01, lo, hi = to_unit(image.astype(np.float32), hole)
        if invert:
            image01 = 1.0 - image01
        size = self.cfg.size
        grid01 = cv2.resize(image01, (size, size), interpolation=cv2.INTER_AREA)
        hole_grid = (cv2.resize(hole.astype(np.float32), (size, size),
                                interpolation=cv2.INTER_AREA) > 0).astype(np.uint8)
        check_known_context(hole_grid, name, f" on the model's {size}x{size} grid")
        pre01 = prefill(grid01, hole_grid, self.cfg.prefill)
        timings["prepare"] = time.perf_counter() - t

        t = time.perf_counter()
        with torch.inference_mode():
            fill_grid, spread_grid = sample_fill(self.model, self.schedule, grid01, hole_grid,
                                                 pre01, self.steps, self.samples, self.seed,
                                                 self.eta)
        timings["sample"] = time.perf_counter() - t

        t = time.perf_counter()
        h, w = image.shape
        fill01 = cv2.resize(fill_grid, (w, h), interpolation=cv2.INTER_CUBIC)
        out01 = blend_seam(image01, np.clip(fill01, 0, 1), hole, self.blend)
        if invert:
            out01 = 1.0 - out01
        out = restore_units(out01, lo, hi, image, hole, self.blend)
        spread = cv2.resize(spread_grid, (w, h), interpolation=cv2.INTER_LINEAR) * hole
        timings["finish"] = time.perf_counter() - t
        timings["total"] = sum(timings.values())
        return InpaintResult(image, out, hole, spread.astype(np.float32), timings,
                             self.params())


def restore_units(out01: np.ndarray, lo: float, hi: float, image: np.ndarray, hole: np.ndarray,
                  blend: str) -> np.ndarray:
    """[0, 1] -> the input's units and dtype. Pixels the blend left alone are the input's own
    values, bit for bit (not a round trip through float)."""
    values = out01.astype(np.float64) * (hi - lo) + lo
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        values = np.clip(np.round(values), info.min, info.max)
    values = values.astype(image.dtype)
    changed = hole > 0
    if blend == "feather":  # the blended ring outside the hole changes too
        changed = cv2.dilate(hole.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
    return np.where(changed, values, image)


def as_source_dtype(loaded) -> np.ndarray:
    """A LoadedImage's array in the dtype it was stored in (8/16-bit stay integers)."""
    dtype = np.dtype(loaded.meta.get("source_dtype", "float32"))
    if np.issubdtype(dtype, np.integer) and not loaded.meta.get("rescale_slope"):
        return np.round(loaded.array).astype(dtype)
    return loaded.array
