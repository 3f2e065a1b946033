"""Synthetic inpainting masks for chest X-rays: rib-like bands over both lung fields, free-form
strokes, boxes, and real device outlines placed elsewhere. Sizes are fractions of the image
side, so one generator serves a 256-px training grid and a 512-px test image alike.

Every function takes ``(H, W)`` and a ``numpy.random.Generator`` and returns a ``uint8``
mask, 1 where pixels are to be filled."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

KINDS = ("ribs", "strokes", "box", "device")


def rib_bands(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """3-6 curved bands per lung field, as posterior ribs run: from near the spine out and
    down to the lateral chest wall, each 1.5-3.5% of the image width thick."""
    h, w = shape
    mask = np.zeros((h, w), np.uint8)
    thick = max(2, int(round(rng.uniform(0.015, 0.035) * w)))
    n = int(rng.integers(3, 7))
    top = rng.uniform(0.18, 0.3) * h
    gap = rng.uniform(0.08, 0.12) * h
    for side in (-1, 1):  # left and right lung field
        for i in range(n):
            y0 = top + i * gap + rng.normal(0, 0.01 * h)
            if y0 > 0.85 * h:
                break
            x_spine = w / 2 + side * rng.uniform(0.04, 0.08) * w
            x_wall = w / 2 + side * rng.uniform(0.32, 0.42) * w
            xs = np.linspace(x_spine, x_wall, 24)
            u = (xs - x_spine) / (x_wall - x_spine)  # 0 at the spine, 1 at the wall
            ys = y0 - rng.uniform(0.03, 0.06) * h * np.sin(np.pi * u) + 0.08 * h * u**2
            pts = np.stack([xs, ys], 1).round().astype(np.int32)
            cv2.polylines(mask, [pts], False, 1, thickness=thick, lineType=cv2.LINE_8)
    return mask


def strokes(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """1-4 free-form brush strokes (random walks), 2-5% of the image side thick."""
    h, w = shape
    mask = np.zeros((h, w), np.uint8)
    side = min(h, w)
    for _ in range(int(rng.integers(1, 5))):
        thick = max(2, int(round(rng.uniform(0.02, 0.05) * side)))
        p = np.array([rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.85) * h])
        angle = rng.uniform(0, 2 * np.pi)
        pts = [p.copy()]
        for _ in range(int(rng.integers(4, 10))):
            angle += rng.normal(0, 0.8)
            p = p + rng.uniform(0.04, 0.1) * side * np.array([np.cos(angle), np.sin(angle)])
            p = np.clip(p, [0.05 * w, 0.05 * h], [0.95 * w, 0.95 * h])
            pts.append(p.copy())
        cv2.polylines(mask, [np.array(pts).round().astype(np.int32)], False, 1, thickness=thick)
    return mask


def box(shape: tuple[int, int], rng: np.random.Generator, low: float = 0.15,
        high: float = 0.25) -> np.ndarray:
    """One axis-aligned box whose sides are ``low``..``high`` of the image's sides, inside the
    central 80% of the image (where the lungs and the heart are)."""
    h, w = shape
    bh, bw = int(rng.uniform(low, high) * h), int(rng.uniform(low, high) * w)
    y = int(rng.uniform(0.1 * h, 0.9 * h - bh))
    x = int(rng.uniform(0.1 * w, 0.9 * w - bw))
    mask = np.zeros((h, w), np.uint8)
    mask[y:y + bh, x:x + bw] = 1
    return mask


def device_mask(shape: tuple[int, int], rng: np.random.Generator,
                outlines: Sequence[np.ndarray]) -> np.ndarray:
    """One real device outline (a cropped 0/1 array, any size), rescaled by 0.8-1.25 and
    placed at a random position; thin devices are dilated by a pixel or two, as a user's mask
    would cover them with a margin."""
    h, w = shape
    outline = outlines[int(rng.integers(len(outlines)))]
    scale = rng.uniform(0.8, 1.25) * min(h, w) / 256.0  # outlines are stored on a 256 grid
    oh = max(1, min(h - 2, int(outline.shape[0] * scale)))
    ow = max(1, min(w - 2, int(outline.shape[1] * scale)))
    piece = cv2.resize(outline.astype(np.uint8), (ow, oh), interpolation=cv2.INTER_NEAREST)
    radius = int(rng.integers(1, 3))
    piece = cv2.dilate(piece, np.ones((2 * radius + 1,) * 2, np.uint8))
    y = int(rng.integers(0, h - oh + 1))
    x = int(rng.integers(0, w - ow + 1))
    mask = np.zeros((h, w), np.uint8)
    mask[y:y + oh, x:x + ow] = piece
    return mask


def device_outlines(label_maps: Sequence[np.ndarray], label: int = 2,
                    min_pixels: int = 20) -> list[np.ndarray]:
    """Connected components of ``label`` in label maps already on a 256 grid, each cropped to
    its bounding box (0/1 uint8)."""
    out = []
    for labels in label_maps:
        count, comp, stats, _ = cv2.connectedComponentsWithStats((labels == label).astype(np.uint8))
        for i in range(1, count):
            x, y, bw, bh, area = stats[i]
            if area >= min_pixels:
                out.append((comp[y:y + bh, x:x + bw] == i).astype(np.uint8))
    return out


def random_mask(shape: tuple[int, int], rng: np.random.Generator,
                outlines: Sequence[np.ndarray] = (), weights: Sequence[float] = (3, 3, 2, 2)
                ) -> np.ndarray:
    """A training mask: one kind drawn by ``weights`` (ribs, strokes, box, device), sometimes
    two kinds together. Never empty and never the whole image."""
    probs = np.asarray(weights, float)
    if not outlines:
        probs[3] = 0
    probs = probs / probs.sum()
    mask = np.zeros(shape, np.uint8)
    for _ in range(1 + int(rng.random() < 0.25)):
        kind = KINDS[int(rng.choice(4, p=probs))]
        mask |= make_mask(kind, shape, rng, outlines)
    if mask.all() or not mask.any():
        mask = box(shape, rng)
    return mask


def make_mask(kind: str, shape: tuple[int, int], rng: np.random.Generator,
              outlines: Sequence[np.ndarray] = ()) -> np.ndarray:
    if kind == "ribs":
        return rib_bands(shape, rng)
    if kind == "strokes":
        return strokes(shape, rng)
    if kind == "box":
        return box(shape, rng)
    if kind == "device":
        return device_mask(shape, rng, outlines)
    raise ValueError(f"unknown mask kind {kind!r}; choose from {KINDS}")
