"""Turn probabilities into a clean binary mask: threshold, morphology, components, holes, smoothing.

``postprocess`` runs the steps in a fixed order; each one is off unless its setting asks for it:

1. **threshold** ``probs >= threshold`` (the same rule as MONAI's ``AsDiscrete(threshold=...)``).
2. **opening** removes salt noise, thin spurs and one-pixel bridges *before* components are
   counted, so that two objects touching by a thread are measured as two.
3. **closing** bridges small gaps and notches; it runs after opening so that it cannot bring
   back the noise opening removed, and before the size filter so that fragments it joins are
   measured as one object.
4. **small objects** are removed once the morphology has settled which pixels belong together.
5. **holes** are filled after small objects are removed, so that a speck lying inside a hole
   does not split the hole into pieces whose sizes are measured separately.
6. **keep largest / top-k** components runs on the cleaned mask, so component sizes include
   filled holes and noise cannot outrank a real object.
7. **smoothing** (Gaussian blur of the binary mask, re-thresholded at 0.5) is last: it only moves
   the boundary by sub-radius amounts, and any pixel-grid operation after it would make the
   boundary jagged again. Blurring can cut a thin neck in two, so when top-k is on, the
   component selection is applied once more after smoothing to keep its promise.

Conventions:
    - Foreground components use full connectivity (8 in 2D, 26 in 3D); holes are enclosed
      background regions with face connectivity (4 in 2D, 6 in 3D), the topologically
      consistent pair. A background region touching the array border is never a hole.
    - A ``(D, H, W)`` input is processed in 3D: balls as structuring elements, 3D connected
      components, 3D holes (a cavity must be closed in every direction), so slices stay
      consistent with each other. A ``(1, H, W)`` input is processed as the 2D image ``(H, W)``.
    - ``spacing`` (same axis order as the array) only changes the *shape* of the structuring
      elements and of the smoothing kernel: radii and sigma are measured in pixels of the finest
      axis and become physical balls, so a CT volume with 5 mm slices and 0.7 mm pixels is not
      opened across five slices. Isotropic spacing gives the same result as ``spacing=None``.
      Sizes (``min_object_size``, ``max_hole_size``) always count pixels/voxels.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage import morphology

from medrefine.errors import ConfigError, InputError

MAX_MORPHOLOGY_RADIUS = 64  # px; larger opening/closing radii are refused

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PostprocessConfig:
    """How probabilities become a binary mask (see the module docstring for the order of steps).

    Attributes:
        threshold: probabilities ``>= threshold`` are foreground; in (0, 1).
        opening_radius: radius in pixels of the disk/ball for binary opening; 0 = off.
        closing_radius: radius in pixels of the disk/ball for binary closing; 0 = off.
        min_object_size: connected components with fewer pixels (voxels) are removed; 0 = off.
        min_object_fraction: the same as a fraction of the image area (volume) in [0, 1);
            0 = off. When both are set the larger pixel count applies.
        fill_holes: fill enclosed background regions.
        max_hole_size: with ``fill_holes``, fill only holes of at most this many pixels;
            0 = fill every hole.
        keep_largest: keep only the largest connected component (same as ``keep_top_k=1``).
        keep_top_k: keep the k largest connected components; 0 = keep all.
        smooth_sigma: Gaussian sigma in pixels for boundary smoothing; 0 = off.
    """

    threshold: float = 0.5
    opening_radius: int = 0
    closing_radius: int = 0
    min_object_size: int = 0
    min_object_fraction: float = 0.0
    fill_holes: bool = False
    max_hole_size: int = 0
    keep_largest: bool = False
    keep_top_k: int = 0
    smooth_sigma: float = 0.0

    def __post_init__(self):
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(
                f"postprocess.threshold must lie in (0, 1), got {self.threshold}; probabilities "
                "are thresholded, so use e.g. 0.5"
            )
        for name in (
            "opening_radius",
            "closing_radius",
            "min_object_size",
            "max_hole_size",
            "keep_top_k",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(
                    f"postprocess.{name} must be an integer >= 0 (0 = off), got {value!r}"
                )
            if name.endswith("_radius") and value > MAX_MORPHOLOGY_RADIUS:
                raise ConfigError(
                    f"postprocess.{name} must be at most {MAX_MORPHOLOGY_RADIUS} px, got {value}"
                    " (a few pixels removes specks or closes gaps)"
                )
        if not 0.0 <= self.min_object_fraction < 1.0:
            raise ConfigError(
                f"postprocess.min_object_fraction must lie in [0, 1), got "
                f"{self.min_object_fraction}; it is a fraction of the image area, e.g. 0.001"
            )
        if not (math.isfinite(self.smooth_sigma) and self.smooth_sigma >= 0.0):
            raise ConfigError(
                f"postprocess.smooth_sigma must be a finite number >= 0 (0 = off), got "
                f"{self.smooth_sigma}"
            )
        if self.max_hole_size > 0 and not self.fill_holes:
            raise ConfigError(
                f"postprocess.max_hole_size={self.max_hole_size} has no effect without "
                "fill_holes=True; set fill_holes=True or max_hole_size=0"
            )
        if self.keep_largest and self.keep_top_k > 1:
            raise ConfigError(
                f"postprocess.keep_largest=True contradicts keep_top_k={self.keep_top_k}; "
                "set one of them (keep_largest is keep_top_k=1)"
            )

    @property
    def top_k(self) -> int:
        """Number of components to keep; 0 keeps all."""
        return 1 if self.keep_largest else self.keep_top_k

    def with_switches(
        self,
        *,
        threshold: float | None = None,
        fill_holes: bool | None = None,
        keep_largest: bool | None = None,
        min_object_size: int | None = None,
        opening_radius: int | None = None,
        closing_radius: int | None = None,
        smooth_sigma: float | None = None,
    ) -> PostprocessConfig:
        """This config with the switches a user set (None: as it is): the one rule of the
        command line's flags and the web app's controls. Turning ``fill_holes`` off also drops
        the hole-size limit; turning ``keep_largest`` on replaces a top-k (turning it off
        leaves the top-k as it is)."""
        changes: dict[str, Any] = {
            key: value
            for key, value in (
                ("threshold", threshold),
                ("fill_holes", fill_holes),
                ("keep_largest", keep_largest),
                ("min_object_size", min_object_size),
                ("opening_radius", opening_radius),
                ("closing_radius", closing_radius),
                ("smooth_sigma", smooth_sigma),
            )
            if value is not None
        }
        if fill_holes is False:
            changes["max_hole_size"] = 0
        if keep_largest:
            changes["keep_top_k"] = 0
        return replace(self, **changes)


def postprocess(
    probs: np.ndarray, cfg: PostprocessConfig, spacing: Sequence[float] | None = None
) -> np.ndarray:
    """Threshold and clean a probability map.

    Args:
        probs: foreground probabilities in [0, 1], shape (H, W) or (D, H, W); any real dtype
            (a bool/0-1 mask works too).
        cfg: the cleanup steps to run.
        spacing: pixel/voxel size per axis in the array's axis order (e.g. mm); shapes the
            structuring elements and smoothing kernel for anisotropic data. None = isotropic.

    Returns:
        uint8 mask with values 0/1, same shape as ``probs``.

    Raises:
        InputError: ``probs`` has the wrong shape, non-finite values or values outside [0, 1],
            or ``spacing`` does not match it.
    """
    probs = _check_probs(probs)
    spacing_arr = _check_spacing(spacing, probs.ndim)
    out_shape = probs.shape
    if probs.ndim == 3 and probs.shape[0] == 1:  # a single slice: 3D holes could never close
        probs = probs[0]
        spacing_arr = None if spacing_arr is None else spacing_arr[1:]

    mask = probs >= cfg.threshold
    mask = _clean_binary(mask, cfg, spacing_arr)
    return mask.astype(np.uint8).reshape(out_shape)


def postprocess_labels(
    label_map: np.ndarray,
    cfg: PostprocessConfig,
    labels: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
) -> np.ndarray:
    """Apply the binary cleanup to each class of a label map.

    Each class ``c`` is cleaned as the binary mask ``label_map == c`` (``cfg.threshold`` is
    irrelevant there). The results are merged so that no class grows into another: a pixel keeps
    its original class when that class's cleanup keeps it; pixels a class gave up (small objects,
    opening) become background; pixels a cleanup adds (hole filling, closing, smoothing) are
    taken only if they are background after that, lower labels first. So filling the holes of an
    organ never erases a lesion labelled inside it.

    Args:
        label_map: integer label map (H, W) or (D, H, W), 0 = background.
        cfg: cleanup steps, applied per class.
        labels: classes to clean; None = every non-zero label present. Other classes are
            copied unchanged.
        spacing: pixel/voxel size per axis, as in ``postprocess``.

    Returns:
        Label map of the same shape and dtype as ``label_map``.

    Raises:
        InputError: ``label_map`` is not an integer (H, W)/(D, H, W) array, or a label in
            ``labels`` is negative or 0.
    """
    label_map = np.asarray(label_map)
    if label_map.ndim not in (2, 3) or label_map.size == 0:
        raise InputError(
            f"label_map must be a non-empty (H, W) or (D, H, W) array, got shape "
            f"{label_map.shape}; pick one image or volume, without a channel axis"
        )
    if not (np.issubdtype(label_map.dtype, np.integer) or label_map.dtype == bool):
        raise InputError(
            f"label_map must hold integer labels, got dtype {label_map.dtype}; for probabilities "
            "use postprocess() or argmax over classes first"
        )
    if labels is None:
        present = np.unique(label_map)
        labels = [int(v) for v in present if v != 0]
    for label in labels:
        if int(label) <= 0:
            raise InputError(f"labels must be positive class ids (0 is background), got {label}")

    out = label_map.copy()
    cleaned = {}
    for label in labels:
        class_mask = label_map == label
        cleaned[label] = postprocess(class_mask.astype(np.float32), cfg, spacing=spacing) > 0
        out[class_mask & ~cleaned[label]] = 0  # given up: becomes background
    for label in sorted(cleaned):
        added = cleaned[label] & (out == 0)  # grows only into background
        out[added] = label
    return out


def _clean_binary(
    mask: np.ndarray, cfg: PostprocessConfig, spacing: np.ndarray | None
) -> np.ndarray:
    """Steps 2-7 of the module docstring on a bool mask (H, W) or (D, H, W)."""
    connectivity = mask.ndim  # full connectivity for foreground components
    for name in ("opening_radius", "closing_radius"):
        radius = getattr(cfg, name)
        if radius > max(1, min(mask.shape[-2:]) // 4):
            raise InputError(
                f"postprocess.{name} {radius} px is more than a quarter of the image's shorter "
                f"side ({min(mask.shape[-2:])} px); use at most {max(1, min(mask.shape[-2:]) // 4)}"
                " (a few pixels removes specks or closes gaps)")
    if cfg.opening_radius > 0:
        footprint = _footprint(cfg.opening_radius, mask.ndim, spacing)
        # mode="ignore": outside the array does not erode objects that touch the border
        mask = _morphology(mask, footprint, "opening")
    if cfg.closing_radius > 0:
        footprint = _footprint(cfg.closing_radius, mask.ndim, spacing)
        mask = _morphology(mask, footprint, "closing")

    min_size = max(cfg.min_object_size, math.ceil(cfg.min_object_fraction * mask.size))
    if min_size > 1:
        # skimage >= 0.26 removes components of size <= max_size; we remove those < min_size
        mask = morphology.remove_small_objects(
            mask, max_size=min_size - 1, connectivity=connectivity
        )

    if cfg.fill_holes:
        mask = _fill_holes(mask, cfg.max_hole_size)
    if cfg.top_k > 0:
        mask = _keep_top_k(mask, cfg.top_k)

    if cfg.smooth_sigma > 0:
        sigma = cfg.smooth_sigma if spacing is None else cfg.smooth_sigma * spacing.min() / spacing
        # mode="nearest": objects touching the border are not eaten from outside
        blurred = ndi.gaussian_filter(mask.astype(np.float32), sigma=sigma, mode="nearest")
        mask = blurred >= 0.5
        if cfg.top_k > 0:
            mask = _keep_top_k(mask, cfg.top_k)
    return mask


def _morphology(mask: np.ndarray, footprint: np.ndarray, op: str) -> np.ndarray:
    """Binary opening/closing with pixels outside the array ignored (skimage's
    ``mode="ignore"``). 2D runs in OpenCV, whose erosion and dilation with the same footprint
    give the same result and stay fast for large radii; 3D runs in scikit-image."""
    if mask.ndim == 2:
        kernel = footprint.astype(np.uint8)
        # OpenCV's default border for erode/dilate is the value that changes nothing
        first, then = (cv2.erode, cv2.dilate) if op == "opening" else (cv2.dilate, cv2.erode)
        return then(first(mask.astype(np.uint8), kernel), kernel).astype(bool)
    run = morphology.opening if op == "opening" else morphology.closing
    return run(mask, footprint, mode="ignore")


def _footprint(radius: int, ndim: int, spacing: np.ndarray | None) -> np.ndarray:
    """Disk (2D) or ball (3D) of ``radius`` pixels; with spacing, a physical ball.

    With spacing the element holds the offsets within ``radius * min(spacing)`` in physical
    units, i.e. an ellipse/ellipsoid in index space that is thinner along coarse axes.
    """
    if spacing is None or np.allclose(spacing, spacing[0]):
        return morphology.disk(radius) if ndim == 2 else morphology.ball(radius)
    scale = spacing / spacing.min()  # >= 1; how many fine-axis pixels one step along each axis is
    half = np.floor(radius / scale).astype(int)
    grids = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    dist2 = sum((g * s) ** 2 for g, s in zip(grids, scale, strict=True))
    return (dist2 <= radius**2).astype(np.uint8)


def _fill_holes(mask: np.ndarray, max_hole_size: int) -> np.ndarray:
    """Fill enclosed background regions (all, or those of at most ``max_hole_size`` pixels)."""
    filled = ndi.binary_fill_holes(mask)  # face connectivity for the background
    if max_hole_size == 0:
        return filled
    holes = filled & ~mask
    big_holes = morphology.remove_small_objects(holes, max_size=max_hole_size, connectivity=1)
    return mask | (holes & ~big_holes)


def _keep_top_k(mask: np.ndarray, k: int) -> np.ndarray:
    """Keep the ``k`` largest connected components (full connectivity); ties keep lower ids."""
    labelled, n = ndi.label(mask, structure=ndi.generate_binary_structure(mask.ndim, mask.ndim))
    if n <= k:
        return mask
    sizes = np.bincount(labelled.ravel())[1:]  # (n,)
    keep_ids = np.argsort(-sizes, kind="stable")[:k] + 1
    return np.isin(labelled, keep_ids)


def _check_probs(probs: np.ndarray) -> np.ndarray:
    """Validate a probability map and return it as float32."""
    probs = np.asarray(probs)
    if probs.ndim not in (2, 3) or probs.size == 0:
        raise InputError(
            f"probs must be a non-empty (H, W) or (D, H, W) array, got shape {probs.shape}; "
            "drop batch/channel axes first, e.g. probs[0, 0]"
        )
    if not (np.issubdtype(probs.dtype, np.number) or probs.dtype == bool):
        raise InputError(f"probs must be numeric, got dtype {probs.dtype}")
    probs = probs.astype(np.float32, copy=False)
    if not np.isfinite(probs).all():
        raise InputError("probs contains NaN or inf; check the model output")
    low, high = float(probs.min()), float(probs.max())
    if low < 0.0 or high > 1.0:
        raise InputError(
            f"probs must lie in [0, 1], got values in [{low:.9g}, {high:.9g}]; apply "
            "sigmoid/softmax to logits first"
        )
    return probs


def _check_spacing(spacing: Sequence[float] | None, ndim: int) -> np.ndarray | None:
    """Validate spacing: ``ndim`` positive finite numbers, or None."""
    if spacing is None:
        return None
    spacing_arr = np.asarray(spacing, dtype=np.float64).reshape(-1)
    if spacing_arr.size != ndim or not np.all(np.isfinite(spacing_arr)) or np.any(spacing_arr <= 0):
        raise InputError(
            f"spacing must be {ndim} positive numbers (one per array axis), got {spacing!r}"
        )
    return spacing_arr
