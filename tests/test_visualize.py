"""Visualisation: shapes, dtypes, colours where masks are set, atomic PNG writing."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medrefine.errors import InputError
from medrefine.visualize import (
    comparison_panel,
    contours,
    overlay,
    save_png,
    training_curve_png,
    uncertainty_heatmap,
)


@pytest.fixture
def image01() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.random((1, 32, 40)).astype(np.float32)  # (C, H, W)


@pytest.fixture
def mask() -> np.ndarray:
    out = np.zeros((32, 40), dtype=np.uint8)
    out[8:20, 10:30] = 1
    return out


def test_overlay_colours_only_the_mask(image01, mask):
    rgb = overlay(image01, mask, color=(255, 0, 0), alpha=1.0)
    assert rgb.shape == (32, 40, 3) and rgb.dtype == np.uint8
    assert (rgb[mask == 1] == [255, 0, 0]).all()
    grey = np.rint(image01[0] * 255).astype(np.uint8)
    np.testing.assert_array_equal(rgb[mask == 0], np.stack([grey] * 3, axis=-1)[mask == 0])
    half = overlay(np.zeros((32, 40), np.float32), mask, color=(200, 100, 0), alpha=0.5)
    assert (half[mask == 1] == [100, 50, 0]).all()


def test_overlay_accepts_rgb_image01_and_uint8_rgb(mask):
    image01 = np.zeros((3, 32, 40), np.float32)
    image01[1] = 1.0  # green
    rgb = overlay(image01, mask, alpha=0.0)
    assert (rgb == [0, 255, 0]).all()
    again = overlay(rgb, mask, color=(0, 0, 255), alpha=1.0)
    assert (again[mask == 1] == [0, 0, 255]).all() and (again[mask == 0] == [0, 255, 0]).all()


def test_contours_draw_each_mask_in_its_colour(image01, mask):
    refined = np.zeros_like(mask)
    refined[22:30, 5:15] = 1
    rgb = contours(image01, [mask, refined], colors=[(255, 0, 0), (0, 0, 255)], thickness=1)
    assert rgb.shape == (32, 40, 3) and rgb.dtype == np.uint8
    assert (rgb[8, 10:30] == [255, 0, 0]).all()  # top edge of the first mask
    assert (rgb[22, 5:15] == [0, 0, 255]).all()  # top edge of the second
    assert not (rgb[14, 20] == [255, 0, 0]).all()  # interior untouched
    with pytest.raises(InputError, match="colour"):
        contours(image01, [mask], colors=[(255, 0, 0), (0, 255, 0)])


def test_uncertainty_heatmap_range_and_blend(image01):
    uncertainty = np.linspace(0, 0.5, 32 * 40, dtype=np.float32).reshape(32, 40)
    heat = uncertainty_heatmap(uncertainty, vmax=0.5)
    assert heat.shape == (32, 40, 3) and heat.dtype == np.uint8
    # magma runs from near-black to a light yellow: brightness grows with uncertainty
    assert heat[0, 0].sum() < 30 and heat[-1, -1].sum() > 600
    clipped = uncertainty_heatmap(uncertainty, vmax=0.25)
    np.testing.assert_array_equal(clipped[-1, -1], clipped[-2, -1])  # above vmax: clipped
    blended = uncertainty_heatmap(uncertainty, image01, vmax=0.5, alpha=0.5)
    assert blended.shape == (32, 40, 3) and not np.array_equal(blended, heat)
    with pytest.raises(InputError, match="cmap"):
        uncertainty_heatmap(uncertainty, cmap="jet")


def test_comparison_panel_layout(image01, mask):
    heat = uncertainty_heatmap(np.zeros((32, 40), np.float32))
    panel = comparison_panel(
        image01,
        {"coarse": mask, "refined": mask, "ground truth": mask, "uncertainty": heat},
        gap=4,
        title_height=20,
    )
    assert panel.dtype == np.uint8
    assert panel.shape == (20 + 32, 5 * 40 + 4 * 4, 3)
    assert (panel[20:, 40:44] == 255).all()  # white gap between tiles
    assert (panel[:20] < 128).any()  # some title text drawn
    np.testing.assert_array_equal(panel[20:, 4 * 44 :], heat)
    with pytest.raises(InputError, match="expected"):
        comparison_panel(image01, {"bad": np.zeros((8, 8), np.uint8)})


def test_save_png_round_trip_is_atomic(tmp_path, image01, mask):
    rgb = overlay(image01, mask)
    path = save_png(rgb, tmp_path / "sub" / "overlay.png")
    np.testing.assert_array_equal(np.asarray(Image.open(path)), rgb)
    assert sorted(p.name for p in path.parent.iterdir()) == ["overlay.png"]  # no temp left
    with pytest.raises(InputError, match="uint8"):
        save_png(rgb.astype(np.float32), tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_training_curve_png(tmp_path):
    history = [{"epoch": e, "train_loss": 1.0 / (e + 1)} for e in range(5)]
    history[4]["val_dice"] = 0.8
    history[2]["val_dice"] = 0.6
    path = training_curve_png(history, tmp_path / "curve.png")
    picture = np.asarray(Image.open(path))
    assert picture.ndim == 3 and picture.shape[1] > picture.shape[0]
    assert [p.name for p in tmp_path.iterdir()] == ["curve.png"]
    with pytest.raises(InputError, match="available keys"):
        training_curve_png(history, tmp_path / "none.png", keys=("val_loss",))


def test_rejects_bad_inputs(mask):
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        overlay(np.full((32, 40), 255.0), mask)
    with pytest.raises(InputError, match="expected"):
        overlay(np.zeros((32, 41), np.float32), mask)
    with pytest.raises(InputError, match="mask > 0"):
        overlay(np.zeros((32, 40), np.float32), mask * 255)
    with pytest.raises(InputError, match="one slice"):
        overlay(np.zeros((4, 32, 40), np.float32), mask)
