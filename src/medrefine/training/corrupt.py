"""Synthetic coarse masks: ground truth damaged the way segmenters damage it.

The refiner must learn to fix real mistakes, but a coarse model's predictions on its own
training images are nearly perfect. Mixed with those predictions, these corruptions give it
errors of every kind: a boundary too far out or in (dilation, erosion), a wobbly boundary
(smooth random displacement), holes, false blobs, missing parts, and soft edges (coarse models
output probabilities, not binary masks).
"""

from __future__ import annotations

import cv2
import numpy as np


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _random_ellipse(shape: tuple[int, int], rng: np.random.Generator, center=None,
                    scale: float = 0.15) -> np.ndarray:
    h, w = shape
    out = np.zeros(shape, np.uint8)
    cy, cx = center if center is not None else (rng.integers(0, h), rng.integers(0, w))
    axes = (max(2, int(rng.uniform(0.3, 1.0) * scale * w)),
            max(2, int(rng.uniform(0.3, 1.0) * scale * h)))
    cv2.ellipse(out, (int(cx), int(cy)), axes, rng.uniform(0, 180), 0, 360, 1, -1)
    return out


def _pick_pixel(mask: np.ndarray, rng: np.random.Generator, value: int = 1):
    ys, xs = np.nonzero(mask == value)
    if len(ys) == 0:
        return None
    i = rng.integers(len(ys))
    return ys[i], xs[i]


def dilate_or_erode(mask, rng):
    k = _disk(int(rng.integers(1, max(2, mask.shape[0] // 20))))
    return cv2.dilate(mask, k) if rng.random() < 0.5 else cv2.erode(mask, k)


def jitter_boundary(mask, rng):
    """Displace the mask by a smooth random field (amplitude up to ~4% of the side)."""
    h, w = mask.shape
    amp = rng.uniform(2, max(2.0, 0.04 * max(h, w)))
    coarse = rng.normal(0, 1, (2, 6, 6)).astype(np.float32)
    field = [cv2.resize(c, (w, h), interpolation=cv2.INTER_CUBIC) * amp for c in coarse]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return cv2.remap(mask, xs + field[0], ys + field[1], cv2.INTER_NEAREST,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def punch_hole(mask, rng):
    centre = _pick_pixel(mask, rng, 1)
    if centre is None:
        return mask
    return mask & (1 - _random_ellipse(mask.shape, rng, centre, 0.08))


def add_blob(mask, rng):
    near = _pick_pixel(cv2.dilate(mask, _disk(15)) - mask, rng, 1) if rng.random() < 0.6 else None
    return mask | _random_ellipse(mask.shape, rng, near, 0.1)


def cut_part(mask, rng):
    """Remove the part of the mask on one side of a random line through it."""
    centre = _pick_pixel(mask, rng, 1)
    if centre is None:
        return mask
    h, w = mask.shape
    ys, xs = np.mgrid[0:h, 0:w]
    angle = rng.uniform(0, 2 * np.pi)
    side = (ys - centre[0]) * np.sin(angle) + (xs - centre[1]) * np.cos(angle)
    return mask & (side < rng.uniform(0, 0.1 * max(h, w))).astype(np.uint8)


def blur_threshold(mask, rng):
    sigma = rng.uniform(1, 6)
    soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigma)
    return (soft > rng.uniform(0.3, 0.7)).astype(np.uint8)


OPS = [dilate_or_erode, jitter_boundary, punch_hole, add_blob, cut_part, blur_threshold]
WEIGHTS = np.array([3, 3, 1, 2, 1.5, 1.5])


def corrupt_mask(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Binary mask (H, W) {0, 1} -> a plausible coarse probability map (H, W) float32."""
    out = mask.astype(np.uint8).copy()
    for _ in range(rng.integers(1, 4)):
        op = OPS[rng.choice(len(OPS), p=WEIGHTS / WEIGHTS.sum())]
        out = op(out, rng)
    probs = out.astype(np.float32)
    sigma = rng.uniform(0.5, 3.0)
    probs = cv2.GaussianBlur(probs, (0, 0), sigma)
    # a coarse model is rarely fully confident: squash towards 0.5 a little
    confidence = rng.uniform(0.7, 1.0)
    return (0.5 + (probs - 0.5) * confidence).astype(np.float32)
