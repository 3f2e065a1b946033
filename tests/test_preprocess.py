"""Intensity normalisation, channels, CLAHE/denoising, and the grid mapping with its inverse."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from medrefine.errors import ConfigError, InputError
from medrefine.metrics import dice
from medrefine.preprocess import (
    CT_WINDOWS,
    PreprocessConfig,
    clahe,
    denoise,
    from_grid,
    normalize_intensity,
    preprocess,
    to_channels,
    to_grid,
)


def _rng():
    return np.random.default_rng(0)


def _ellipse(h, w, cy, cx, ry, rx):
    yy, xx = np.mgrid[:h, :w]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


# ---------------------------------------------------------------- intensities
def test_auto_divides_8bit_by_255():
    image = np.array([[[0, 51, 255]]], np.float32)
    out = normalize_intensity(image, "auto", source_dtype="uint8")
    np.testing.assert_allclose(out, [[[0.0, 0.2, 1.0]]])
    # a dark 8-bit image stays dark: no stretching
    dark = np.full((1, 4, 4), 10, np.float32)
    np.testing.assert_allclose(normalize_intensity(dark, "auto", source_dtype="uint8"), 10 / 255)


def test_auto_uses_percentiles_for_16bit():
    image = _rng().integers(1000, 3000, (1, 64, 64)).astype(np.float32)
    image[0, 0, 0] = 65535  # an outlier must not squash everything else
    out = normalize_intensity(image, "auto", source_dtype="uint16")
    lo, hi = np.percentile(image, (0.5, 99.5))
    np.testing.assert_allclose(out, np.clip((image - lo) / (hi - lo), 0, 1), atol=1e-6)
    assert out.min() == 0.0 and out.max() == 1.0 and 0.3 < out.mean() < 0.7


@pytest.mark.parametrize("preset", sorted(CT_WINDOWS))
def test_window_presets_map_level_to_half(preset):
    level, width = CT_WINDOWS[preset]
    hu = np.array(
        [[[level - width, level - width / 2, level, level + width / 2, 3000]]], np.float32
    )
    out = normalize_intensity(hu, "window", window=preset)
    np.testing.assert_allclose(out, [[[0.0, 0.0, 0.5, 1.0, 1.0]]], atol=1e-6)


def test_window_tuple_and_lung_values():
    hu = np.array([[[-1000.0, -600.0, 150.0]]], np.float32)
    np.testing.assert_allclose(
        normalize_intensity(hu, "window", window="lung"),
        [[[(-1000 + 1350) / 1500, 0.5, 1.0]]],
        atol=1e-6,
    )
    np.testing.assert_allclose(
        normalize_intensity(hu, "window", window=(0.0, 2000.0)), [[[0.0, 0.2, 0.575]]], atol=1e-6
    )


@pytest.mark.parametrize("method", ["minmax", "percentile", "auto"])
def test_constant_image_gives_zeros(method):
    image = np.full((1, 8, 8), 1234.0, np.float32)
    out = normalize_intensity(image, method, source_dtype="int16")
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out, 0.0)


@pytest.mark.parametrize("method", ["minmax", "percentile", "zscore", "none"])
def test_outputs_lie_in_unit_interval(method):
    image = (_rng().normal(0, 500, (3, 16, 16))).astype(np.float32)
    out = normalize_intensity(image, method)
    assert out.dtype == np.float32 and out.shape == image.shape
    assert out.min() >= 0 and out.max() <= 1


def test_minmax_and_zscore_values():
    image = np.array([[[10.0, 20.0, 30.0]]], np.float32)
    np.testing.assert_allclose(normalize_intensity(image, "minmax"), [[[0.0, 0.5, 1.0]]])
    z = normalize_intensity(image, "zscore")
    assert z[0, 0, 1] == pytest.approx(0.5) and z[0, 0, 0] < 0.5 < z[0, 0, 2]


def test_unknown_method():
    with pytest.raises(ConfigError):
        normalize_intensity(np.zeros((1, 2, 2), np.float32), "histogram")


# ---------------------------------------------------------------- channels
def test_to_channels():
    gray = _rng().random((1, 4, 5)).astype(np.float32)
    rgb = to_channels(gray, 3)
    assert rgb.shape == (3, 4, 5) and all(np.array_equal(c, gray[0]) for c in rgb)
    np.testing.assert_allclose(to_channels(rgb, 1), gray, atol=1e-6)  # weights sum to 1
    red = np.zeros((3, 2, 2), np.float32)
    red[0] = 1
    np.testing.assert_allclose(to_channels(red, 1), 0.299, atol=1e-6)
    rgba = np.concatenate([rgb, np.ones((1, 4, 5), np.float32)])
    np.testing.assert_array_equal(to_channels(rgba, 3), rgb)
    gray_alpha = np.concatenate([gray, np.zeros_like(gray)])
    np.testing.assert_array_equal(to_channels(gray_alpha, 1), gray)
    with pytest.raises(InputError):
        to_channels(np.zeros((5, 2, 2), np.float32), 3)


# ---------------------------------------------------------------- CLAHE and denoising
@pytest.mark.parametrize("channels", [1, 3])
def test_clahe_shape_range_and_contrast(channels):
    rng = _rng()
    low = (0.4 + 0.1 * rng.random((channels, 64, 64))).astype(np.float32)
    out = clahe(low)
    assert out.shape == low.shape and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1
    if channels == 1:
        assert out.std() > low.std()  # contrast is stretched


@pytest.mark.parametrize("method", ["none", "gaussian", "median", "bilateral", "nlmeans"])
@pytest.mark.parametrize("channels", [1, 3])
def test_denoise_shape_range_and_smoothing(method, channels):
    rng = _rng()
    clean = np.tile(np.linspace(0.2, 0.8, 48, dtype=np.float32), (channels, 48, 1))
    noisy = np.clip(clean + rng.normal(0, 0.04, clean.shape), 0, 1).astype(np.float32)
    out = denoise(noisy, method)
    assert out.shape == noisy.shape and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1
    if method != "none":
        assert np.abs(out - clean).mean() < 0.8 * np.abs(noisy - clean).mean()


def test_denoise_unknown():
    with pytest.raises(ConfigError):
        denoise(np.zeros((1, 8, 8), np.float32), "wavelet")


# ---------------------------------------------------------------- grid mapping
@pytest.mark.parametrize("mode", ["stretch", "pad"])
@pytest.mark.parametrize("shape", [(37, 53), (64, 64), (120, 45), (256, 300)])
def test_grid_round_trip_restores_the_original_size(mode, shape):
    image = _rng().random((2, *shape)).astype(np.float32)
    grid, info = to_grid(image, (64, 64), mode)
    assert grid.shape == (2, 64, 64) and grid.dtype == np.float32
    assert info.original_size == shape and info.grid_size == (64, 64)
    back = from_grid(grid, info)
    assert back.shape == image.shape and back.dtype == np.float32


def test_pad_keeps_aspect_ratio_and_pads_with_zeros():
    image = np.ones((1, 30, 60), np.float32)
    grid, info = to_grid(image, (64, 64), "pad")
    top, left, bh, bw = info.box
    assert (bh, bw) == (32, 64) and (top, left) == (16, 0)
    assert grid[:, top : top + bh, left : left + bw].min() == pytest.approx(1.0)
    assert grid[:, :top].max() == 0 and grid[:, top + bh :].max() == 0
    # the padding never leaks back into the original pixels
    np.testing.assert_allclose(from_grid(grid, info), 1.0, atol=1e-6)


def test_stretch_box_is_the_whole_grid():
    _, info = to_grid(np.zeros((1, 10, 40), np.float32), (32, 32), "stretch")
    assert info.box == (0, 0, 32, 32)


@pytest.mark.parametrize("mode", ["stretch", "pad"])
@pytest.mark.parametrize("shape", [(100, 150), (48, 200), (300, 256)])
def test_mask_through_the_grid_and_back_keeps_dice(mode, shape):
    h, w = shape
    mask = _ellipse(h, w, h * 0.45, w * 0.55, h * 0.25, w * 0.2)
    grid, info = to_grid(mask[None].astype(np.float32), (64, 64), mode)
    back = from_grid(grid, info)[0] > 0.5
    assert back.shape == mask.shape
    assert dice(back, mask) > 0.95


def test_identity_grid_is_exact():
    image = _rng().random((1, 32, 32)).astype(np.float32)
    grid, info = to_grid(image, (32, 32), "stretch")
    np.testing.assert_array_equal(grid, image)
    np.testing.assert_array_equal(from_grid(grid, info), image)


# ---------------------------------------------------------------- the whole chain
def test_preprocess_chain():
    raw = _rng().integers(0, 256, (1, 50, 70)).astype(np.float32)
    cfg = PreprocessConfig(size=(32, 32), channels=3, clahe=True, denoise="gaussian", resize="pad")
    image01, info = preprocess(raw, cfg, "uint8")
    assert image01.shape == (3, 32, 32) and image01.dtype == np.float32
    assert image01.min() >= 0 and image01.max() <= 1
    assert info.original_size == (50, 70)
    with pytest.raises(InputError, match="2D"):
        preprocess(raw[None], cfg)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"size": (8, 8)},
        {"size": (32,)},
        {"channels": 2},
        {"norm": "robust"},
        {"norm": "window"},
        {"window": "kidney"},
        {"denoise": "tv"},
        {"resize": "crop"},
        {"percentiles": (50, 10)},
    ],
)
def test_config_rejects(kwargs):
    with pytest.raises(ConfigError):
        PreprocessConfig(**kwargs)


def test_inter_area_upscaling_is_smooth_not_blocky():
    small = np.array([[[0.0, 1.0]]], np.float32)
    grid, _ = to_grid(small, (16, 16), "stretch", interpolation=cv2.INTER_AREA)
    assert len(np.unique(grid.round(4))) > 2


def test_minmax_clahe_gives_hu_the_recipe_of_8bit_source_slices():
    """A CT slice in HU gets min-max then CLAHE, exactly as a source that made its slices
    8-bit that way; the source's own 8-bit slice passes as it is (no second CLAHE)."""
    rng = np.random.default_rng(0)
    hu = rng.normal(-700, 300, (1, 64, 64)).clip(-1024, 1500).astype(np.float32)
    hu[0, :, :4] = -3024  # padding outside the field of view is clipped to air, not stretched
    cfg = PreprocessConfig(size=(64, 64), channels=1, norm="minmax-clahe", clahe_clip=7.0)
    got, _ = preprocess(hu, cfg, "int16")
    clipped = np.maximum(hu[0], -1024)
    u8 = np.round((clipped - clipped.min()) / (clipped.max() - clipped.min()) * 255)
    source = cv2.createCLAHE(clipLimit=7.0, tileGridSize=(8, 8)).apply(u8.astype(np.uint8))
    assert np.abs(got[0] * 255 - source).max() <= 1
    slice8 = source[None].astype(np.float32)
    again, _ = preprocess(slice8, cfg, "uint8")
    np.testing.assert_allclose(again[0] * 255, source, atol=1e-3)
