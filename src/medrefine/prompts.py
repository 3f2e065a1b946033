"""Prompts a user gives instead of a mask: boxes (as a detector or a quick drag gives them) and
brush strokes. Each becomes a starting mask for the refiner, which then has to find the object
inside it; the refiner was trained on such boxes (``training/mask_sources.py``).

Boxes are ``(x0, y0, x1, y1)`` in pixels of the original image, corners inclusive-exclusive as
in most detectors' output (x to the right, y down).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from medrefine.errors import InputError

Box = tuple[float, float, float, float]


def parse_box(text: str) -> Box:
    """``"x0,y0,x1,y1"`` -> a box; one clear line if it is not four numbers."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 4 or not all(np.isfinite(values)):
        raise InputError(f"box {text!r}: expected four numbers x0,y0,x1,y1 (pixels, "
                         "x to the right, y down), e.g. --box 40,60,200,220")
    return values  # type: ignore[return-value]


def check_boxes(boxes: Iterable[Sequence[float]], shape: tuple[int, int]) -> list[Box]:
    """Boxes clipped to an (H, W) image; a box that is empty or lies outside it is an error."""
    h, w = shape
    out = []
    for box in boxes:
        if len(box) != 4:
            raise InputError(f"box {tuple(box)}: expected four numbers x0,y0,x1,y1")
        x0, y0, x1, y1 = (float(v) for v in box)
        if x1 < x0:
            x0, x1 = x1, x0
        if y1 < y0:
            y0, y1 = y1, y0
        cx0, cy0, cx1, cy1 = max(0.0, x0), max(0.0, y0), min(float(w), x1), min(float(h), y1)
        if cx1 - cx0 < 1 or cy1 - cy0 < 1:
            raise InputError(f"box {x0:g},{y0:g},{x1:g},{y1:g} holds no pixel of the "
                             f"{w}x{h} image (x0,y0,x1,y1 in pixels, x to the right)")
        out.append((cx0, cy0, cx1, cy1))
    if not out:
        raise InputError("no box given")
    return out


def boxes_to_mask(boxes: Iterable[Sequence[float]], shape: tuple[int, int]) -> np.ndarray:
    """Boxes -> a uint8 (H, W) 0/1 mask, 1 inside any box."""
    mask = np.zeros(shape, np.uint8)
    for x0, y0, x1, y1 in check_boxes(boxes, shape):
        mask[int(round(y0)):int(round(y1)), int(round(x0)):int(round(x1))] = 1
    return mask


def mask_boxes(mask: np.ndarray, min_fraction: float = 0.001) -> list[Box]:
    """Tight boxes of a mask's connected components (those above ``min_fraction`` of the
    image): one box per object, as a detector would give them."""
    import cv2

    n, _, stats, _ = cv2.connectedComponentsWithStats(np.asarray(mask, np.uint8), connectivity=8)
    boxes = []
    for i in range(1, n):
        x, y, bw, bh, area = stats[i]
        if area >= min_fraction * mask.size:
            boxes.append((float(x), float(y), float(x + bw), float(y + bh)))
    return boxes


def jitter_box(box: Box, fraction: float, rng: np.random.Generator) -> Box:
    """Move each side of a box by up to ``fraction`` of the box's size (uniform, either way)."""
    x0, y0, x1, y1 = box
    dw, dh = fraction * (x1 - x0), fraction * (y1 - y0)
    return (x0 + rng.uniform(-dw, dw), y0 + rng.uniform(-dh, dh),
            x1 + rng.uniform(-dw, dw), y1 + rng.uniform(-dh, dh))
