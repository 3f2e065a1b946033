"""Metrics: hand-computed cases, empty-mask conventions, spacing, 3D, agreement with MONAI."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from medrefine.errors import InputError
from medrefine.metrics import (
    assd,
    boundary_f_score,
    dice,
    hd95,
    iou,
    per_class_metrics,
    precision,
    psnr,
    recall,
    segmentation_metrics,
    ssim,
    summarize,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _square(shape, top, left, side):
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + side, left : left + side] = True
    return mask


def _blob(rng, shape, fraction=0.4, sigma=3.0):
    field = ndi.gaussian_filter(rng.random(shape), sigma)
    return field > np.quantile(field, 1.0 - fraction)


# --- hand-computed cases -----------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3, 5])
def test_squares_offset_by_k(k):
    # 10x10 squares shifted by k columns: overlap 10*(10-k); the 10 pixels of the leading and
    # trailing columns are exactly k away from the other surface (10/36 > 5%), none is farther.
    pred = _square((40, 40), 10, 10, 10)
    gt = _square((40, 40), 10, 10 + k, 10)
    overlap = 10 * (10 - k)
    assert dice(pred, gt) == pytest.approx(2 * overlap / 200)
    assert iou(pred, gt) == pytest.approx(overlap / (200 - overlap))
    assert precision(pred, gt) == pytest.approx(overlap / 100)
    assert recall(pred, gt) == pytest.approx(overlap / 100)
    assert hd95(pred, gt) == pytest.approx(k)


def test_anisotropic_spacing_scales_hd95_along_its_axis():
    pred = _square((40, 40), 10, 10, 10)
    shifted_cols = _square((40, 40), 10, 13, 10)
    shifted_rows = _square((40, 40), 13, 10, 10)
    spacing = (1.0, 2.0)  # (row, col) in mm
    assert hd95(pred, shifted_cols, spacing=spacing) == pytest.approx(6.0)
    assert hd95(pred, shifted_rows, spacing=spacing) == pytest.approx(3.0)
    assert hd95(pred, shifted_cols, spacing=2.5) == pytest.approx(7.5)  # one number = isotropic


def test_concentric_squares_hd95_and_assd():
    # inner 10x10 inside outer 14x14: every inner surface pixel is 2 from the outer surface;
    # of the 52 outer ones, 40 are 2 away, 8 are sqrt(5) and 4 corners sqrt(8) away.
    inner = _square((30, 30), 10, 10, 10)
    outer = _square((30, 30), 8, 8, 14)
    expected_assd = (36 * 2 + 40 * 2 + 8 * math.sqrt(5) + 4 * math.sqrt(8)) / 88
    assert assd(inner, outer) == pytest.approx(expected_assd)
    # p95 of the 52 sorted outer distances interpolates between indices 48 and 49: both sqrt(8)
    assert hd95(inner, outer) == pytest.approx(math.sqrt(8))
    assert dice(inner, outer) == pytest.approx(200 / 296)
    assert boundary_f_score(inner, outer, tolerance=2.0) == pytest.approx(
        2 * 1.0 * (40 / 52) / (1.0 + 40 / 52)
    )
    assert boundary_f_score(inner, outer, tolerance=3.0) == pytest.approx(1.0)


def test_3d_cubes_offset_along_depth_with_spacing():
    pred = np.zeros((20, 20, 20), dtype=np.uint8)
    gt = np.zeros_like(pred)
    pred[5:11, 5:11, 5:11] = 1
    gt[7:13, 5:11, 5:11] = 1
    assert dice(pred, gt) == pytest.approx(2 * 4 * 36 / (2 * 216))
    assert hd95(pred, gt) == pytest.approx(2.0)
    assert hd95(pred, gt, spacing=(3.0, 1.0, 1.0)) == pytest.approx(6.0)
    assert hd95(pred, gt, spacing=(1.0, 3.0, 3.0)) == pytest.approx(2.0)


def test_identical_masks_are_perfect():
    mask = _square((32, 32), 4, 4, 12)
    result = segmentation_metrics(mask, mask.astype(np.uint8))
    assert result == {
        "dice": 1.0,
        "iou": 1.0,
        "precision": 1.0,
        "recall": 1.0,
        "hd95": 0.0,
        "assd": 0.0,
        "bf_score": 1.0,
    }


# --- empty-mask conventions --------------------------------------------------------------------


def test_both_empty():
    empty = np.zeros((16, 16), dtype=bool)
    result = segmentation_metrics(empty, empty)
    assert result == {
        "dice": 1.0,
        "iou": 1.0,
        "precision": 1.0,
        "recall": 1.0,
        "hd95": 0.0,
        "assd": 0.0,
        "bf_score": 1.0,
    }


def test_pred_empty_gt_not():
    empty = np.zeros((16, 16), dtype=bool)
    gt = _square((16, 16), 2, 2, 5)
    result = segmentation_metrics(empty, gt)
    assert result["dice"] == 0.0 and result["iou"] == 0.0
    assert result["recall"] == 0.0 and math.isnan(result["precision"])
    assert result["bf_score"] == 0.0
    assert math.isnan(result["hd95"]) and math.isnan(result["assd"])
    assert math.isnan(hd95(empty, gt)) and math.isnan(assd(empty, gt))


def test_gt_empty_pred_not():
    empty = np.zeros((16, 16), dtype=np.uint8)
    pred = _square((16, 16), 2, 2, 5).astype(np.uint8)
    result = segmentation_metrics(pred, empty)
    assert result["dice"] == 0.0 and result["iou"] == 0.0
    assert result["precision"] == 0.0 and math.isnan(result["recall"])
    assert result["bf_score"] == 0.0
    assert math.isnan(result["hd95"]) and math.isnan(result["assd"])


def test_summarize_skips_nan_and_counts_it():
    rows = [
        {"case": "a", "dice": 1.0, "hd95": 2.0},
        {"case": "b", "dice": 0.5, "hd95": float("nan")},
        {"case": "c", "dice": 0.0, "hd95": 4.0},
    ]
    summary = summarize(rows)
    assert "case" not in summary
    assert summary["dice"]["mean"] == pytest.approx(0.5)
    assert summary["dice"]["median"] == pytest.approx(0.5)
    assert summary["dice"]["std"] == pytest.approx(np.std([1.0, 0.5, 0.0]))
    assert summary["dice"]["n_undefined"] == 0
    assert summary["hd95"]["mean"] == pytest.approx(3.0)
    assert summary["hd95"]["n"] == 2 and summary["hd95"]["n_undefined"] == 1
    all_nan = summarize([{"hd95": float("nan")}])["hd95"]
    assert math.isnan(all_nan["mean"]) and all_nan["n_undefined"] == 1


# --- validation --------------------------------------------------------------------------------


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(InputError, match=r"\(8, 8\).*\(8, 9\)"):
        dice(np.zeros((8, 8)), np.zeros((8, 9)))
    with pytest.raises(InputError, match="same shape"):
        segmentation_metrics(np.zeros((4, 8, 8)), np.zeros((8, 8)))


def test_non_binary_and_bad_spacing_are_rejected():
    with pytest.raises(InputError, match="mask > 0|pred > 0"):
        dice(np.full((8, 8), 255, np.uint8), np.zeros((8, 8), np.uint8))
    with pytest.raises(InputError, match="spacing"):
        hd95(np.ones((8, 8)), np.ones((8, 8)), spacing=(1.0, 1.0, 1.0))
    with pytest.raises(InputError, match="spacing"):
        hd95(np.ones((8, 8)), np.ones((8, 8)), spacing=(1.0, 0.0))
    with pytest.raises(InputError, match="ndim|H, W"):
        dice(np.ones((2, 2, 2, 2)), np.ones((2, 2, 2, 2)))


# --- multi-class, images -----------------------------------------------------------------------


def test_per_class_metrics():
    gt = np.zeros((20, 20), np.uint8)
    gt[2:8, 2:8] = 1
    gt[10:16, 10:16] = 2
    pred = gt.copy()
    pred[10:16, 10:13] = 0  # class 2 loses half its pixels
    result = per_class_metrics(pred, gt, labels=[1, 2, 3])
    assert result[1]["dice"] == 1.0
    assert result[2]["dice"] == pytest.approx(2 * 18 / (18 + 36))
    assert result[2]["precision"] == 1.0 and result[2]["recall"] == pytest.approx(0.5)
    assert result[3]["dice"] == 1.0 and result[3]["hd95"] == 0.0  # absent in both


def test_psnr_and_ssim():
    rng = np.random.default_rng(0)
    image01 = rng.random((32, 32)) * 0.8
    assert psnr(image01 + 0.1, image01) == pytest.approx(20.0)  # MSE 0.01
    assert psnr(image01, image01) == math.inf
    assert ssim(image01, image01) == pytest.approx(1.0)
    noisy = np.clip(image01 + rng.normal(0, 0.2, image01.shape), 0, 1)
    assert ssim(noisy, image01) < 0.9
    rgb = np.stack([image01] * 3)  # (3, H, W)
    assert ssim(rgb, rgb, channel_axis=0) == pytest.approx(1.0)
    with pytest.raises(InputError, match=">= 7"):
        ssim(np.zeros((4, 4)), np.zeros((4, 4)))


# --- agreement with MONAI ----------------------------------------------------------------------


def _monai_values(pred, gt, spacing):
    torch = pytest.importorskip("torch")
    from monai.metrics import (
        compute_average_surface_distance,
        compute_dice,
        compute_hausdorff_distance,
        compute_iou,
    )

    y_pred = torch.from_numpy(pred[None, None].astype(np.float32))  # (B=1, C=1, *S)
    y = torch.from_numpy(gt[None, None].astype(np.float32))
    common = {"include_background": True}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "dice": compute_dice(y_pred, y, **common).item(),
            "iou": compute_iou(y_pred, y, **common).item(),
            "hd95": compute_hausdorff_distance(
                y_pred, y, percentile=95, spacing=spacing, **common
            ).item(),
            "assd": compute_average_surface_distance(
                y_pred, y, symmetric=True, spacing=spacing, **common
            ).item(),
        }


@pytest.mark.parametrize(
    ("shape", "spacing"),
    [((64, 64), None), ((48, 72), (0.7, 1.9)), ((12, 24, 24), (3.0, 0.8, 0.8))],
)
def test_agrees_with_monai_on_random_blobs(shape, spacing):
    rng = np.random.default_rng(42)
    for _ in range(3):
        pred, gt = _blob(rng, shape), _blob(rng, shape)
        ours = segmentation_metrics(pred, gt, spacing=spacing)
        theirs = _monai_values(pred, gt, spacing)
        for key, value in theirs.items():
            # MONAI computes in float32; relative 1e-5 covers its rounding of mm distances
            assert ours[key] == pytest.approx(value, rel=1e-5, abs=1e-4), key


def test_agrees_with_monai_on_hand_cases():
    inner = _square((30, 30), 10, 10, 10)
    outer = _square((30, 30), 8, 8, 14)
    theirs = _monai_values(inner, outer, None)
    ours = segmentation_metrics(inner, outer)
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, abs=1e-4), key


def test_real_kvasir_mask_against_monai():
    mask_dir = DATA / "kvasir_seg" / "masks"
    if not mask_dir.is_dir():
        pytest.skip(f"real data not found at {mask_dir}")
    from PIL import Image

    path = sorted(mask_dir.glob("*.png"))[0]
    gt = np.asarray(Image.open(path).convert("L")) > 127  # 0/255 PNG -> bool (H, W)
    pred = ndi.binary_erosion(np.roll(gt, 5, axis=1), iterations=3)
    ours = segmentation_metrics(pred, gt)
    theirs = _monai_values(pred, gt, None)
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, rel=1e-5, abs=1e-4), key
    assert 0.5 < ours["dice"] < 1.0
