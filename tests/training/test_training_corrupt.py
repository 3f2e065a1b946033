"""Synthetic coarse masks: type, range, shape, and that they really differ from the truth."""

from __future__ import annotations

import numpy as np
import pytest

from medrefine.metrics import dice
from medrefine.training.corrupt import OPS, corrupt_mask


def _mask(h=64, w=80):
    yy, xx = np.mgrid[:h, :w]
    return ((yy - h / 2) ** 2 / 15**2 + (xx - w / 2) ** 2 / 20**2 <= 1).astype(np.uint8)


@pytest.mark.parametrize("seed", range(8))
def test_corrupt_mask_contract(seed):
    mask = _mask()
    out = corrupt_mask(mask, np.random.default_rng(seed))
    assert out.shape == mask.shape and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1
    assert not np.array_equal(out, mask.astype(np.float32))
    # soft edges and below-full confidence: not a binary mask
    assert len(np.unique(out)) > 2


def test_corruptions_are_plausible_on_average():
    # single draws may remove most of the object (cut_part); typical ones are near misses
    mask = _mask().astype(bool)
    scores = [dice(corrupt_mask(_mask(), np.random.default_rng(s)) > 0.5, mask) for s in range(30)]
    assert 0.5 < np.median(scores) < 0.995


def test_corrupt_mask_does_not_modify_its_input():
    mask = _mask()
    before = mask.copy()
    corrupt_mask(mask, np.random.default_rng(0))
    np.testing.assert_array_equal(mask, before)


def test_corrupt_mask_is_seeded():
    mask = _mask()
    a = corrupt_mask(mask, np.random.default_rng(3))
    b = corrupt_mask(mask, np.random.default_rng(3))
    c = corrupt_mask(mask, np.random.default_rng(4))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("seed", range(4))
def test_empty_mask_survives(seed):
    out = corrupt_mask(np.zeros((64, 64), np.uint8), np.random.default_rng(seed))
    assert out.shape == (64, 64) and np.isfinite(out).all() and out.max() <= 1


def test_small_masks_can_be_corrupted():
    rng = np.random.default_rng(0)
    for _ in range(20):  # jitter_boundary is drawn with probability 0.25 per operation
        out = corrupt_mask(_mask(32, 32), rng)
        assert out.shape == (32, 32)


@pytest.mark.parametrize("op", OPS, ids=lambda f: f.__name__)
def test_each_operation_keeps_a_binary_uint8_mask(op):
    mask = _mask()
    rng = np.random.default_rng(1)
    changed = False
    for _ in range(5):
        out = op(mask.copy(), rng)
        assert out.shape == mask.shape and out.dtype == np.uint8
        assert set(np.unique(out)) <= {0, 1}
        changed |= not np.array_equal(out, mask)
    assert changed, f"{op.__name__} never changed the mask"


@pytest.mark.parametrize("kind", ["box", "outline", "shift", "fragment", "lowres", "corrupt"])
@pytest.mark.parametrize("seed", range(4))
def test_user_like_masks(kind, seed):
    from medrefine.training.mask_sources import SYNTHETIC

    mask = _mask()
    out = np.asarray(SYNTHETIC[kind](mask, np.random.default_rng(seed)))
    assert out.shape == mask.shape and out.min() >= 0 and out.max() <= 1
    score = dice(out > 0.5, mask.astype(bool))
    assert 0.2 < score < 1.0  # damaged, but about the same object
    if kind == "box":  # a box holds the whole object (only loosened or tightened by <= 20%)
        assert (out > 0.5).sum() >= 0.7 * mask.sum()


def test_box_source_gives_one_box_per_object():
    from medrefine.training.mask_sources import box_mask

    mask = np.zeros((64, 64), np.uint8)
    mask[5:15, 5:15] = 1
    mask[40:60, 30:50] = 1
    out = box_mask(mask, np.random.default_rng(0))
    import cv2

    assert cv2.connectedComponents(out)[0] - 1 == 2


def test_mask_sources_config_checks():
    from medrefine.errors import ConfigError
    from medrefine.training.mask_sources import MaskSources

    assert abs(sum(MaskSources().shares().values()) - 1.0) < 1e-9
    with pytest.raises(ConfigError):
        MaskSources(coarse=-1)
    with pytest.raises(ConfigError):
        MaskSources(hard=1.5)
    with pytest.raises(ConfigError, match="at least one"):
        MaskSources(**{k: 0 for k in MaskSources().shares()})
