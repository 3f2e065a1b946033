"""The coarse model over overlapping tiles of an image: a second look, at a larger scale, for
objects too small for the model's grid at the whole frame (a small polyp of another archive
is a few grid pixels at 256 x 256 and can vanish there).

``tile_boxes`` lays ``n x n`` tiles, each ``fraction`` of the frame's side, evenly over the
frame (the first at the top-left corner, the last at the bottom-right one); ``tiled_probs``
cuts them from the frame as the model's own preprocessing prepares it (the whole frame's
normalisation, so a tile is not stretched to its own range), resizes each to the model's
grid, runs the model (its test-time flips as given), maps each back and averages the
probabilities where tiles overlap.

    tiled_probs(coarse, image (C, H, W), source_dtype, n=3, fraction=0.45) -> (K, H, W)

``Preset.empty_rescue`` uses it where the whole frame's mask comes out empty
(``slices.slice_probs``): the rescue, reported per image in report.json as ``empty_rescue``.
With ``gate`` (a presence gate fitted on tiles, ``medrefine.presence``), a tile it judges to
hold no object is left out of the average: measured in ``scripts/polyp_empty_rescue_eval.py
--tile-gate``, not shipped (the polyp model card, "Tiles for an empty frame").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from medrefine.errors import ConfigError
from medrefine.preprocess import PreprocessConfig, from_grid, intensities01, to_grid

# The smallest tile side in pixels: an image whose tiles would be smaller is left to the
# whole-frame view (a 0.45 tile of a 142-px image is 64 px, a quarter of the 256 grid).
MIN_TILE_SIDE = 64


class TileGate(Protocol):
    """What the tiles read of a presence gate (``presence.PresenceGate``)."""

    @property
    def threshold(self) -> float: ...

    def probability(self, image01: np.ndarray, tta: Sequence[str] = ()) -> float: ...


class GridModel(Protocol):
    """What a tiled run reads of a coarse model (``CoarseSegmenter``, an ONNX one)."""

    @property
    def pre_cfg(self) -> PreprocessConfig: ...

    def predict_grid(self, image01: np.ndarray | torch.Tensor, tta: Sequence[str] = ()
                     ) -> torch.Tensor: ...


def check_tiles(n: int, fraction: float) -> None:
    """``n`` tiles a side, each ``fraction`` of it, covering the frame."""
    if n < 2:
        raise ConfigError(f"tiles: {n} a side; use at least 2 (0 = no tiling)")
    if not 0.0 < fraction < 1.0 or n * fraction < 1.0:
        raise ConfigError(f"tiles: {n} a side of {fraction} of the frame each do not cover "
                          "it; use a fraction in (0, 1) with n * fraction >= 1")


def tile_boxes(shape: tuple[int, int], n: int, fraction: float
               ) -> list[tuple[int, int, int, int]]:
    """(top, left, height, width) of ``n x n`` tiles of ``fraction`` of an (H, W) frame."""
    check_tiles(n, fraction)
    h, w = shape
    th, tw = max(1, round(h * fraction)), max(1, round(w * fraction))
    tops = np.linspace(0, h - th, n).round().astype(int)
    lefts = np.linspace(0, w - tw, n).round().astype(int)
    return [(int(t), int(s), th, tw) for t in tops for s in lefts]


def tiled_probs(coarse: GridModel, image: np.ndarray, source_dtype: str = "float32",
                tta: Sequence[str] = (), n: int = 3, fraction: float = 0.45,
                gate: TileGate | None = None) -> np.ndarray | None:
    """Raw (C, H, W) -> (K, H, W) probabilities of the tiles, averaged where they overlap;
    None when a tile would be smaller than ``MIN_TILE_SIDE`` pixels. ``gate``: tiles it
    judges to hold no object are left out (0 where no tile is left)."""
    boxes = tile_boxes(image.shape[1:], n, fraction)
    if min(boxes[0][2:]) < MIN_TILE_SIDE:
        return None
    cfg = coarse.pre_cfg
    frame01 = intensities01(image, cfg, source_dtype)  # the whole frame's normalisation
    prepared = [to_grid(frame01[:, t:t + th, s:s + tw], cfg.size, cfg.resize)
                for t, s, th, tw in boxes]
    kept = [True] * len(boxes) if gate is None else [
        gate.probability(x, tta) >= gate.threshold for x, _ in prepared]
    grid_probs = coarse.predict_grid(np.stack([p[0] for p in prepared]), tta).cpu().numpy()
    total = np.zeros((grid_probs.shape[1], *image.shape[1:]), np.float32)
    count = np.zeros(image.shape[1:], np.float32)
    for (t, s, th, tw), probs, (_, grid), keep in zip(boxes, grid_probs, prepared, kept,
                                                        strict=True):
        if keep:
            total[:, t:t + th, s:s + tw] += from_grid(probs, grid)
            count[t:t + th, s:s + tw] += 1.0
    return np.clip(total / np.maximum(count, 1.0), 0.0, 1.0)
