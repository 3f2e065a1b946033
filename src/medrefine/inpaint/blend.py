"""Putting a fill (made on the model's grid, resized back) into the original image at its seam.

* ``hard``: fill inside the hole, the original outside, nothing else.
* ``feather``: on a ring of ``radius`` pixels outside the hole the original is mixed with a
  local mean across the seam (weight a Gaussian ramp from 1 at the edge to 0), so a slight
  level step at the seam is spread out; only that thin ring changes besides the hole.
* ``poisson``: Poisson image editing (Perez et al. 2003) by OpenCV's ``seamlessClone``: the
  fill keeps its own gradients and takes the original's values on the seam. ``seamlessClone``
  works on 8-bit images, so it is used for the correction it makes (a smooth membrane, clone
  minus fill), which is then added to the fill at full precision.

All take and return float32 (H, W) in [0, 1]; ``hole`` is 0/1."""

from __future__ import annotations

import cv2
import numpy as np

from medrefine.errors import ConfigError


def blend(original01: np.ndarray, fill01: np.ndarray, hole: np.ndarray, mode: str = "feather",
          radius: int = 2) -> np.ndarray:
    hole = hole.astype(bool)
    hard = np.where(hole, fill01, original01).astype(np.float32)
    if mode == "hard":
        return hard
    if mode == "feather":
        return _feather(original01, hard, hole, radius)
    if mode == "poisson":
        return _poisson(original01, hard, hole)
    raise ConfigError(f"unknown blend {mode!r}; use hard, feather or poisson")


def _feather(original01, hard, hole, radius: int) -> np.ndarray:
    """Inside the hole: the fill. On a ring of ``radius`` px outside it: the original mixed
    with a 3x3 mean of the hard blend, the mean's weight a Gaussian ramp from 1 at the edge to
    0, which softens the step at the seam without inventing texture."""
    if radius < 1:
        return hard
    outside = cv2.distanceTransform((~hole).astype(np.uint8), cv2.DIST_L2, 3)  # 0 in the hole
    alpha = np.exp(-0.5 * (outside / (radius / 2.0)) ** 2) * (outside <= radius)
    soft = cv2.blur(hard, (3, 3))
    ring = (alpha * soft + (1 - alpha) * original01).astype(np.float32)
    return np.where(hole, hard, ring).astype(np.float32)


def _poisson(original01, hard, hole) -> np.ndarray:
    h, w = hole.shape
    pad = 8  # seamlessClone needs the mask clear of the image border
    src = cv2.copyMakeBorder(hard, pad, pad, pad, pad, cv2.BORDER_REFLECT)
    dst = cv2.copyMakeBorder(original01, pad, pad, pad, pad, cv2.BORDER_REFLECT)
    mask = cv2.copyMakeBorder(hole.astype(np.uint8), pad, pad, pad, pad, cv2.BORDER_CONSTANT, 0)
    mask = cv2.dilate(mask, np.ones((3, 3), np.uint8)) * 255
    src8 = np.round(src * 255).astype(np.uint8)
    dst8 = np.round(dst * 255).astype(np.uint8)
    x, y, bw, bh = cv2.boundingRect(mask)
    center = (x + bw // 2, y + bh // 2)
    clone = cv2.seamlessClone(cv2.merge([src8] * 3), cv2.merge([dst8] * 3), mask, center,
                              cv2.NORMAL_CLONE)[..., 0]
    correction = (clone.astype(np.float32) - src8.astype(np.float32)) / 255
    correction = correction[pad:pad + h, pad:pad + w]
    return np.where(hole, np.clip(hard + correction, 0, 1), original01).astype(np.float32)
