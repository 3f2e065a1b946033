"""Postprocessing: each option on synthetic masks, 2D and 3D, config validation, label maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medrefine.errors import ConfigError, InputError
from medrefine.postprocess import PostprocessConfig, postprocess, postprocess_labels

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _probs_from(mask: np.ndarray) -> np.ndarray:
    """A probability map whose 0.5 threshold is ``mask``."""
    return np.where(mask, 0.9, 0.1).astype(np.float32)


def _disk(shape, center, radius):
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    dist2 = sum((g - c) ** 2 for g, c in zip(grids, center, strict=True))
    return dist2 <= radius**2


def test_threshold_only_by_default():
    probs = np.array([[0.2, 0.5], [0.49, 0.99]], dtype=np.float32)
    out = postprocess(probs, PostprocessConfig())
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[0, 1], [0, 1]])
    out = postprocess(probs, PostprocessConfig(threshold=0.9))
    np.testing.assert_array_equal(out, [[0, 0], [0, 1]])


def test_small_blob_removed_big_one_kept():
    mask = _disk((64, 64), (30, 30), 10)
    mask[5:7, 55:57] = True  # 4-pixel speck
    probs = _probs_from(mask)
    out = postprocess(probs, PostprocessConfig(min_object_size=5))
    assert out[5:7, 55:57].sum() == 0
    assert out.sum() == mask.sum() - 4
    # exactly at the size: kept (objects *smaller* than min_object_size go)
    assert postprocess(probs, PostprocessConfig(min_object_size=4))[5:7, 55:57].all()
    # relative option: 0.002 * 4096 = 8.2 -> 9 pixels
    out = postprocess(probs, PostprocessConfig(min_object_fraction=0.002))
    assert out[5:7, 55:57].sum() == 0 and out[30, 30] == 1


def test_hole_filled_and_max_hole_size():
    mask = _disk((64, 64), (32, 32), 20)
    mask[30:33, 30:33] = False  # 9-pixel hole
    mask[15:17, 32:34] = False  # 4-pixel hole
    probs = _probs_from(mask)
    out = postprocess(probs, PostprocessConfig(fill_holes=True))
    np.testing.assert_array_equal(out, _disk((64, 64), (32, 32), 20))
    out = postprocess(probs, PostprocessConfig(fill_holes=True, max_hole_size=4))
    assert out[15:17, 32:34].all() and not out[30:33, 30:33].any()


def test_background_touching_border_is_not_a_hole():
    mask = np.ones((20, 20), dtype=bool)
    mask[0:2, 8:10] = False  # a notch at the border: not enclosed
    out = postprocess(_probs_from(mask), PostprocessConfig(fill_holes=True, max_hole_size=10))
    assert not out[0:2, 8:10].any()


def test_keep_largest_and_top_k():
    mask = (
        _disk((64, 64), (20, 20), 8) | _disk((64, 64), (45, 45), 5) | _disk((64, 64), (10, 50), 3)
    )
    probs = _probs_from(mask)
    out = postprocess(probs, PostprocessConfig(keep_largest=True))
    np.testing.assert_array_equal(out, _disk((64, 64), (20, 20), 8))
    out = postprocess(probs, PostprocessConfig(keep_top_k=2))
    np.testing.assert_array_equal(out, _disk((64, 64), (20, 20), 8) | _disk((64, 64), (45, 45), 5))


def test_opening_removes_thin_bridge_and_noise():
    mask = _disk((64, 64), (32, 16), 10) | _disk((64, 64), (32, 48), 10)
    mask[32, 16:48] = True  # one-pixel bridge
    mask[5, 5] = True  # salt
    out = postprocess(_probs_from(mask), PostprocessConfig(opening_radius=1, keep_top_k=1))
    assert out[32, 32] == 0 and out[5, 5] == 0
    assert out[32, 16] == 1 and out[32, 48] == 0  # two objects after opening, one kept


def test_opening_keeps_objects_touching_the_border():
    mask = np.zeros((32, 32), dtype=bool)
    mask[:, :10] = True  # a band along the left border
    out = postprocess(_probs_from(mask), PostprocessConfig(opening_radius=3))
    np.testing.assert_array_equal(out, mask)


def test_closing_bridges_a_gap():
    mask = np.zeros((32, 32), dtype=bool)
    mask[10:20, 5:15] = True
    mask[10:20, 16:26] = True  # one-column gap at column 15
    out = postprocess(_probs_from(mask), PostprocessConfig(closing_radius=1))
    assert out[12:18, 15].all()


def test_smoothing_removes_staircase_spike_and_keeps_disk():
    disk = _disk((64, 64), (32, 32), 15)
    mask = disk.copy()
    mask[32, 47:50] = True  # a 1-pixel spike
    out = postprocess(_probs_from(mask), PostprocessConfig(smooth_sigma=1.5))
    assert out[32, 48] == 0
    agreement = (out.astype(bool) == disk).mean()
    assert agreement > 0.99


def test_3d_components_connect_across_slices():
    volume = np.zeros((6, 20, 20), dtype=bool)
    volume[1, 2:8, 2:8] = True  # 36 voxels on slice 1 ...
    volume[2, 6:12, 6:12] = True  # ... touching these 36 on slice 2: one 3D object
    volume[4, 15:19, 15:19] = True  # 16 voxels, separate
    out = postprocess(_probs_from(volume), PostprocessConfig(keep_largest=True))
    assert out.shape == volume.shape
    np.testing.assert_array_equal(out.astype(bool), volume & ~(np.arange(6) == 4)[:, None, None])
    # size filter counts voxels of the whole 3D object (72), not per slice (36)
    out = postprocess(_probs_from(volume), PostprocessConfig(min_object_size=50))
    assert out[1].sum() == 36 and out[2].sum() == 36 and out[4].sum() == 0


def test_3d_hole_is_a_closed_cavity():
    volume = np.zeros((7, 10, 10), dtype=bool)
    volume[1:6, 2:8, 2:8] = True
    volume[3, 4:6, 4:6] = False  # enclosed cavity
    out = postprocess(_probs_from(volume), PostprocessConfig(fill_holes=True))
    assert out[3, 4:6, 4:6].all()
    tube = np.zeros((7, 10, 10), dtype=bool)
    tube[:, 2:8, 2:8] = True
    tube[:, 4:6, 4:6] = False  # open at both ends: not a 3D hole
    out = postprocess(_probs_from(tube), PostprocessConfig(fill_holes=True))
    assert not out[:, 4:6, 4:6].any()


def test_single_slice_volume_is_treated_as_2d():
    mask = _disk((32, 32), (16, 16), 10)
    mask[15:17, 15:17] = False
    out = postprocess(_probs_from(mask)[None], PostprocessConfig(fill_holes=True))
    assert out.shape == (1, 32, 32) and out[0, 15:17, 15:17].all()


def test_anisotropic_spacing_does_not_open_across_thick_slices():
    volume = np.zeros((3, 30, 30), dtype=bool)
    volume[1, 5:25, 5:25] = True  # a single thick slice (5 mm) of a 0.5 mm in-plane object
    probs = _probs_from(volume)
    cfg = PostprocessConfig(opening_radius=2)
    assert postprocess(probs, cfg).sum() == 0  # a voxel ball erases a 1-slice object
    out = postprocess(probs, cfg, spacing=(5.0, 0.5, 0.5))
    assert out[1, 10:20, 10:20].all()  # the physical ball is flat along depth
    same = postprocess(probs, cfg, spacing=(0.8, 0.8, 0.8))
    np.testing.assert_array_equal(same, postprocess(probs, cfg))


def test_postprocess_labels_per_class_without_overwriting():
    labels = np.zeros((40, 40), dtype=np.uint8)
    labels[5:35, 5:35] = 1  # organ ...
    labels[15:20, 15:20] = 2  # ... with a lesion inside it
    labels[1, 1] = 2  # speck of class 2
    labels[25:27, 25:27] = 0  # true hole in the organ
    cfg = PostprocessConfig(fill_holes=True, min_object_size=3)
    out = postprocess_labels(labels, cfg)
    assert out.dtype == np.uint8
    assert (out[15:20, 15:20] == 2).all()  # lesion not swallowed by organ hole filling
    assert (out[25:27, 25:27] == 1).all()  # organ hole filled
    assert out[1, 1] == 0  # speck removed
    only_one = postprocess_labels(labels, cfg, labels=[1])
    assert only_one[1, 1] == 2  # class 2 left untouched


def test_config_validation():
    with pytest.raises(ConfigError, match="threshold"):
        PostprocessConfig(threshold=1.0)
    with pytest.raises(ConfigError, match="opening_radius"):
        PostprocessConfig(opening_radius=-1)
    with pytest.raises(ConfigError, match="min_object_size"):
        PostprocessConfig(min_object_size=2.5)
    with pytest.raises(ConfigError, match="fill_holes=True"):
        PostprocessConfig(max_hole_size=10)
    with pytest.raises(ConfigError, match="keep_top_k"):
        PostprocessConfig(keep_largest=True, keep_top_k=3)
    with pytest.raises(ConfigError, match="min_object_fraction"):
        PostprocessConfig(min_object_fraction=1.5)
    with pytest.raises(ConfigError, match="smooth_sigma"):
        PostprocessConfig(smooth_sigma=float("nan"))
    with pytest.raises(AttributeError):
        PostprocessConfig().threshold = 0.3  # frozen


def test_input_validation():
    cfg = PostprocessConfig()
    with pytest.raises(InputError, match="sigmoid"):
        postprocess(np.full((4, 4), 3.0), cfg)
    with pytest.raises(InputError, match="NaN"):
        postprocess(np.full((4, 4), np.nan), cfg)
    with pytest.raises(InputError, match=r"\(1, 1, 4, 4\)"):
        postprocess(np.zeros((1, 1, 4, 4)), cfg)
    with pytest.raises(InputError, match="spacing"):
        postprocess(np.zeros((4, 4)), cfg, spacing=(1.0,))
    with pytest.raises(InputError, match="integer"):
        postprocess_labels(np.zeros((4, 4), np.float32), cfg)


def test_real_kvasir_mask_survives_cleanup():
    mask_dir = DATA / "kvasir_seg" / "masks"
    if not mask_dir.is_dir():
        pytest.skip(f"real data not found at {mask_dir}")
    from PIL import Image

    path = sorted(mask_dir.glob("*.png"))[0]
    gt = np.asarray(Image.open(path).convert("L")) > 127  # (H, W)
    rng = np.random.default_rng(0)
    noisy = gt ^ (rng.random(gt.shape) < 0.01)  # salt-and-pepper on 1% of pixels
    cfg = PostprocessConfig(
        opening_radius=1, min_object_size=30, fill_holes=True, keep_largest=True, smooth_sigma=1
    )
    out = postprocess(_probs_from(noisy), cfg).astype(bool)
    dice_clean = 2 * (out & gt).sum() / (out.sum() + gt.sum())
    dice_noisy = 2 * (noisy & gt).sum() / (noisy.sum() + gt.sum())
    assert dice_clean > 0.97 and dice_clean > dice_noisy


def test_morphology_radius_is_bounded_and_fast_path_matches_skimage():
    """Radius 100 once took 111 s and 10 GB on a 448 x 512 image: radii above 64 px are
    refused in the config, above a quarter of the shorter side at run time; the 2D opening and
    closing (OpenCV) equal scikit-image's with pixels outside ignored."""
    from scipy import ndimage as ndi
    from skimage import morphology

    from medrefine.errors import ConfigError, InputError
    from medrefine.postprocess import PostprocessConfig, _footprint, _morphology, postprocess

    with pytest.raises(ConfigError, match="at most 64"):
        PostprocessConfig(closing_radius=100)
    probs = np.zeros((60, 80), np.float32)
    probs[10:40, 10:50] = 1.0
    with pytest.raises(InputError, match="quarter of the image's shorter side"):
        postprocess(probs, PostprocessConfig(opening_radius=16))
    assert postprocess(probs, PostprocessConfig(opening_radius=12)).sum() > 0
    rng = np.random.default_rng(0)
    for radius in (1, 4, 9):
        mask = ndi.binary_dilation(rng.random((57, 73)) > 0.7)
        footprint = _footprint(radius, 2, None)
        for op, ref in (("opening", morphology.opening), ("closing", morphology.closing)):
            np.testing.assert_array_equal(_morphology(mask, footprint, op),
                                          ref(mask, footprint, mode="ignore"))


def test_switches_change_only_what_is_set():
    """``with_switches``: the one override rule of the CLI flags and the app's controls."""
    from medrefine.postprocess import PostprocessConfig

    base = PostprocessConfig(fill_holes=True, max_hole_size=50, keep_top_k=2, smooth_sigma=1.0)
    assert base.with_switches() == base
    assert base.with_switches(fill_holes=True, keep_largest=False) == base
    off = base.with_switches(fill_holes=False)
    assert (off.fill_holes, off.max_hole_size) == (False, 0)  # no limit left on no holes
    largest = base.with_switches(keep_largest=True)
    assert (largest.keep_largest, largest.keep_top_k, largest.top_k) == (True, 0, 1)
    assert base.with_switches(keep_largest=False).keep_top_k == 2  # the top-k stays
    set_all = base.with_switches(threshold=0.4, min_object_size=9, opening_radius=1,
                                 closing_radius=2, smooth_sigma=0.0)
    assert (set_all.threshold, set_all.min_object_size, set_all.opening_radius,
            set_all.closing_radius, set_all.smooth_sigma) == (0.4, 9, 1, 2, 0.0)
