"""Segmentation and image-quality metrics on numpy arrays.

Masks are bool or uint8 0/1 arrays, 2D ``(H, W)`` or 3D ``(D, H, W)``; ``pred`` and ``gt`` must
have the same shape. Distances are in pixels, or in physical units (e.g. mm) when ``spacing``
(one value per axis, in the array's axis order) is given.

Surface distances follow MONAI (``monai.metrics.utils.get_edge_surface_distance``): the surface
of a mask is the set of foreground pixels removed by one binary erosion with face connectivity
(pixels outside the array count as background, so objects touching the border have a surface
there); the distance from each surface pixel of one mask to the nearest surface pixel of the
other is the exact Euclidean distance (``scipy.ndimage.distance_transform_edt`` with
``sampling=spacing``). Then

- ``hd95`` = max(p95(pred -> gt), p95(gt -> pred)), each percentile with linear interpolation:
  MONAI's ``compute_hausdorff_distance(percentile=95)``.
- ``assd`` = mean of the union of both directed distance sets: MONAI's
  ``compute_average_surface_distance(symmetric=True)``.
- ``boundary_f_score`` = F1 of boundary precision (share of pred surface pixels within
  ``tolerance`` of the gt surface) and boundary recall (the reverse), as in the DAVIS benchmark
  (Perazzi et al., CVPR 2016) and Csurka et al., BMVC 2013.

Empty masks (pick these on purpose: they decide what a dataset mean means):

metric              both empty   pred empty, gt not         gt empty, pred not
    dice, iou           1            0                          0
    precision           1            NaN (0/0, predicted none)  0
    recall              1            0                          NaN (0/0, nothing to find)
    boundary_f_score    1            0                          0
    hd95, assd          0            NaN (undefined)            NaN (undefined)

Rationale: agreeing that there is nothing is a perfect result; missing or hallucinating an
object entirely scores 0 on the overlap metrics, so a dataset mean of dice is not inflated. A
distance to an empty set does not exist; MONAI returns inf there, which would make any mean inf,
so we return NaN and ``summarize`` skips NaN and reports how many values were undefined next to
the statistics. (MONAI returns NaN for dice and distances when both masks are empty.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage as ndi
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from medrefine.errors import InputError

NAN = float("nan")


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice coefficient 2|P∩G| / (|P| + |G|); 1 when both masks are empty.

    Args:
        pred, gt: binary masks of the same shape, (H, W) or (D, H, W).
    """
    pred, gt = _check_pair(pred, gt)
    tp, fp, fn = _confusion(pred, gt)
    denom = 2 * tp + fp + fn
    return 1.0 if denom == 0 else 2.0 * tp / denom


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Intersection over union (Jaccard) |P∩G| / |P∪G|; 1 when both masks are empty.

    Args:
        pred, gt: binary masks of the same shape, (H, W) or (D, H, W).
    """
    pred, gt = _check_pair(pred, gt)
    tp, fp, fn = _confusion(pred, gt)
    denom = tp + fp + fn
    return 1.0 if denom == 0 else tp / denom


def precision(pred: np.ndarray, gt: np.ndarray) -> float:
    """TP / (TP + FP); 1 when both are empty, NaN when only pred is empty (see module docstring).

    Args:
        pred, gt: binary masks of the same shape, (H, W) or (D, H, W).
    """
    pred, gt = _check_pair(pred, gt)
    tp, fp, fn = _confusion(pred, gt)
    return _ratio_or_convention(tp, tp + fp, both_empty=(tp + fp + fn) == 0)


def recall(pred: np.ndarray, gt: np.ndarray) -> float:
    """TP / (TP + FN) (sensitivity); 1 when both are empty, NaN when only gt is empty.

    Args:
        pred, gt: binary masks of the same shape, (H, W) or (D, H, W).
    """
    pred, gt = _check_pair(pred, gt)
    tp, fp, fn = _confusion(pred, gt)
    return _ratio_or_convention(tp, tp + fn, both_empty=(tp + fp + fn) == 0)


def hd95(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """95th-percentile symmetric Hausdorff distance (MONAI definition, see module docstring).

    Args:
        pred, gt: binary masks of the same shape, (H, W) or (D, H, W).
        spacing: pixel size per axis; None = distances in pixels.

    Returns:
        Distance in pixels or spacing units; 0 if both masks are empty, NaN if exactly one is.
    """
    pred, gt = _check_pair(pred, gt)
    return _hd95_from(_surface_distances(pred, gt, _check_spacing(spacing, pred.ndim)))


def assd(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """Average symmetric surface distance (MONAI ``symmetric=True`` definition).

    Args:
        pred, gt: binary masks of the same shape, (H, W) or (D, H, W).
        spacing: pixel size per axis; None = distances in pixels.

    Returns:
        Distance in pixels or spacing units; 0 if both masks are empty, NaN if exactly one is.
    """
    pred, gt = _check_pair(pred, gt)
    return _assd_from(_surface_distances(pred, gt, _check_spacing(spacing, pred.ndim)))


def boundary_f_score(
    pred: np.ndarray,
    gt: np.ndarray,
    tolerance: float = 2.0,
    spacing: Sequence[float] | None = None,
) -> float:
    """Boundary F1: harmonic mean of boundary precision and recall within a tolerance.

    A surface pixel counts as matched when the other mask's surface lies within ``tolerance``
    (DAVIS F measure, Perazzi et al. 2016; Csurka et al. 2013).

    Args:
        pred, gt: binary masks of the same shape, (H, W) or (D, H, W).
        tolerance: match distance, in pixels, or in spacing units when ``spacing`` is given.
        spacing: pixel size per axis; None = pixels.

    Returns:
        F1 in [0, 1]; 1 if both masks are empty, 0 if exactly one is.
    """
    pred, gt = _check_pair(pred, gt)
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise InputError(f"tolerance must be a finite number >= 0, got {tolerance}")
    distances = _surface_distances(pred, gt, _check_spacing(spacing, pred.ndim))
    return _bf_from(distances, tolerance)


def psnr(image_pred: np.ndarray, image_true: np.ndarray, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB (``skimage.metrics.peak_signal_noise_ratio``).

    Args:
        image_pred, image_true: images of the same shape with values in [0, data_range].
        data_range: value range of the images (1 for ``image01``).

    Returns:
        PSNR in dB; inf for identical images.
    """
    image_pred, image_true = _check_images(image_pred, image_true)
    if np.array_equal(image_pred, image_true):
        return math.inf  # skimage would divide by zero and warn
    return float(peak_signal_noise_ratio(image_true, image_pred, data_range=data_range))


def ssim(
    image_pred: np.ndarray,
    image_true: np.ndarray,
    data_range: float = 1.0,
    channel_axis: int | None = None,
) -> float:
    """Structural similarity (``skimage.metrics.structural_similarity``, 7x7 window).

    Args:
        image_pred, image_true: images of the same shape with values in [0, data_range]: (H, W),
            (D, H, W), or multi-channel with ``channel_axis`` set (0 for (C, H, W)).
        data_range: value range of the images (1 for ``image01``).
        channel_axis: axis holding channels; None = every axis is spatial.

    Returns:
        Mean SSIM in [-1, 1].
    """
    image_pred, image_true = _check_images(image_pred, image_true)
    try:
        value = structural_similarity(
            image_true, image_pred, data_range=data_range, channel_axis=channel_axis
        )
    except ValueError as err:
        raise InputError(
            f"ssim failed on images of shape {image_pred.shape} (channel_axis={channel_axis}): "
            f"{err}; every spatial side must be >= 7 pixels"
        ) from err
    return float(value)


def segmentation_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float] | None = None,
    bf_tolerance: float = 2.0,
) -> dict[str, float]:
    """All mask metrics at once, computing the surface distances only once.

    PSNR/SSIM compare images, not masks, and are not included; call ``psnr``/``ssim`` directly.

    Args:
        pred, gt: binary masks of the same shape, (H, W) or (D, H, W).
        spacing: pixel size per axis; distances (and ``bf_tolerance``) in its units.
        bf_tolerance: tolerance of ``boundary_f_score``.

    Returns:
        ``{"dice", "iou", "precision", "recall", "hd95", "assd", "bf_score"}`` as floats, with the
        empty-mask conventions of the module docstring.
    """
    pred, gt = _check_pair(pred, gt)
    tp, fp, fn = _confusion(pred, gt)
    both_empty = (tp + fp + fn) == 0
    distances = _surface_distances(pred, gt, _check_spacing(spacing, pred.ndim))
    return {
        "dice": 1.0 if both_empty else 2.0 * tp / (2 * tp + fp + fn),
        "iou": 1.0 if both_empty else tp / (tp + fp + fn),
        "precision": _ratio_or_convention(tp, tp + fp, both_empty),
        "recall": _ratio_or_convention(tp, tp + fn, both_empty),
        "hd95": _hd95_from(distances),
        "assd": _assd_from(distances),
        "bf_score": _bf_from(distances, bf_tolerance),
    }


def per_class_metrics(
    pred_labels: np.ndarray,
    gt_labels: np.ndarray,
    labels: Sequence[int],
    spacing: Sequence[float] | None = None,
) -> dict[int, dict[str, float]]:
    """``segmentation_metrics`` for each class ``c`` of two label maps (``== c`` masks).

    Args:
        pred_labels, gt_labels: integer label maps of the same shape, (H, W) or (D, H, W).
        labels: class ids to evaluate (usually excluding background 0).
        spacing: pixel size per axis.

    Returns:
        ``{label: metrics dict}`` in the order of ``labels``.
    """
    pred_labels = np.asarray(pred_labels)
    gt_labels = np.asarray(gt_labels)
    _check_shapes(pred_labels, gt_labels)
    return {
        int(c): segmentation_metrics(pred_labels == c, gt_labels == c, spacing=spacing)
        for c in labels
    }


def summarize(rows: Sequence[Mapping[str, object]]) -> dict[str, dict[str, float]]:
    """Mean, std (population, ddof=0), median per metric over cases, ignoring NaN.

    Non-numeric values (case names, paths) are skipped. inf values are kept (e.g. PSNR of
    identical images) and make the mean inf.

    Args:
        rows: one dict per case, e.g. from ``segmentation_metrics`` plus a ``"case"`` key.

    Returns:
        ``{metric: {"mean", "std", "median", "n", "n_undefined"}}``: ``n`` counts the defined
        (non-NaN) values used, ``n_undefined`` the NaN ones skipped. Statistics are NaN when no
        value is defined.
    """
    values: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                continue
            values.setdefault(key, []).append(float(value))
    summary: dict[str, dict[str, float]] = {}
    for key, vals in values.items():
        arr = np.asarray(vals, dtype=np.float64)
        defined = arr[~np.isnan(arr)]
        n_undefined = int(arr.size - defined.size)
        if defined.size == 0:
            stats = {"mean": NAN, "std": NAN, "median": NAN}
        else:
            stats = {
                "mean": float(defined.mean()),
                "std": float(defined.std()),
                "median": float(np.median(defined)),
            }
        summary[key] = {**stats, "n": float(defined.size), "n_undefined": float(n_undefined)}
    return summary


# --- internals ---------------------------------------------------------------------------------


def _confusion(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int, int]:
    """(TP, FP, FN) pixel counts of two bool masks."""
    tp = int(np.count_nonzero(pred & gt))
    fp = int(np.count_nonzero(pred)) - tp
    fn = int(np.count_nonzero(gt)) - tp
    return tp, fp, fn


def _ratio_or_convention(numerator: int, denominator: int, both_empty: bool) -> float:
    """numerator / denominator; 1 when both masks are empty, NaN for any other 0/0."""
    if both_empty:
        return 1.0
    return NAN if denominator == 0 else numerator / denominator


_Distances = tuple[np.ndarray, np.ndarray] | None  # (pred->gt, gt->pred); None = both empty


def _surface_distances(pred: np.ndarray, gt: np.ndarray, spacing: np.ndarray | None) -> _Distances:
    """Directed surface distances (pred -> gt, gt -> pred), or None when both masks are empty.

    When exactly one mask is empty, the distances from the other are all inf.
    """
    union = pred | gt
    if not union.any():
        return None
    # Crop to the union's bounding box plus one pixel: distances between surface pixels do not
    # change, and the pad keeps surfaces at the array border (outside counts as background).
    coords = np.argwhere(union)
    lo = np.maximum(coords.min(axis=0) - 1, 0)
    hi = coords.max(axis=0) + 2
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    pad = [(1, 1)] * pred.ndim
    pred_c = np.pad(pred[box], pad)
    gt_c = np.pad(gt[box], pad)
    edges_pred = pred_c & ~ndi.binary_erosion(pred_c)  # face connectivity, as MONAI
    edges_gt = gt_c & ~ndi.binary_erosion(gt_c)
    return _directed(edges_pred, edges_gt, spacing), _directed(edges_gt, edges_pred, spacing)


def _directed(
    edges_from: np.ndarray, edges_to: np.ndarray, spacing: np.ndarray | None
) -> np.ndarray:
    """Distance from each pixel of ``edges_from`` to the nearest pixel of ``edges_to``; (N,)."""
    if not edges_from.any():
        return np.zeros(0, dtype=np.float64)
    if not edges_to.any():
        return np.full(int(edges_from.sum()), np.inf)
    dist = ndi.distance_transform_edt(~edges_to, sampling=spacing)
    return dist[edges_from]


def _one_empty(distances: tuple[np.ndarray, np.ndarray]) -> bool:
    """True when exactly one mask is empty (no surface on one side: inf or no distances)."""
    return any(d.size == 0 or np.isinf(d).any() for d in distances)


def _hd95_from(distances: _Distances) -> float:
    if distances is None:
        return 0.0
    d_pred, d_gt = distances
    if _one_empty(distances):
        return NAN
    # np.percentile's default "linear" method is torch.quantile's, which MONAI uses
    return float(max(np.percentile(d_pred, 95), np.percentile(d_gt, 95)))


def _assd_from(distances: _Distances) -> float:
    if distances is None:
        return 0.0
    if _one_empty(distances):
        return NAN
    return float(np.concatenate(distances).mean())


def _bf_from(distances: _Distances, tolerance: float) -> float:
    if distances is None:
        return 1.0
    if _one_empty(distances):
        return 0.0
    d_pred, d_gt = distances
    b_precision = float(np.mean(d_pred <= tolerance))
    b_recall = float(np.mean(d_gt <= tolerance))
    if b_precision + b_recall == 0:
        return 0.0
    return 2 * b_precision * b_recall / (b_precision + b_recall)


def _check_shapes(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise InputError(
            f"pred and gt must have the same shape, got pred {a.shape} and gt {b.shape}; "
            "resample the prediction to the ground-truth grid first"
        )
    if a.ndim not in (2, 3) or a.size == 0:
        raise InputError(
            f"masks must be non-empty (H, W) or (D, H, W) arrays, got shape {a.shape}; "
            "drop batch/channel axes first"
        )


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate two binary masks and return them as bool arrays."""
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    _check_shapes(pred, gt)
    return _as_bool(pred, "pred"), _as_bool(gt, "gt")


def _as_bool(mask: np.ndarray, name: str) -> np.ndarray:
    if mask.dtype == bool:
        return mask
    if not np.issubdtype(mask.dtype, np.number) or np.any((mask != 0) & (mask != 1)):
        values = np.unique(mask)[:5] if np.issubdtype(mask.dtype, np.number) else mask.dtype
        raise InputError(
            f"{name} must be a binary mask (bool or 0/1), got values/dtype {values}; "
            f"convert with {name} > 0 (0/255 masks) or threshold probabilities first"
        )
    return mask != 0


def _check_spacing(spacing: Sequence[float] | None, ndim: int) -> np.ndarray | None:
    if spacing is None:
        return None
    spacing_arr = np.asarray(spacing, dtype=np.float64).reshape(-1)
    if spacing_arr.size == 1:
        spacing_arr = np.repeat(spacing_arr, ndim)
    if spacing_arr.size != ndim or not np.all(np.isfinite(spacing_arr)) or np.any(spacing_arr <= 0):
        raise InputError(
            f"spacing must be {ndim} positive numbers (one per mask axis) or one number, got "
            f"{spacing!r}"
        )
    return spacing_arr


def _check_images(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.size == 0:
        raise InputError(
            f"images must be non-empty and have the same shape, got {a.shape} and {b.shape}"
        )
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise InputError("images contain NaN or inf; psnr/ssim need finite values")
    return a, b
