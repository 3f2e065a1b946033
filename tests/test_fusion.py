"""Fusing sampled masks (mean, vote, STAPLE), entropy and the review score on hand cases."""

from __future__ import annotations

import numpy as np
import pytest

from medrefine.errors import ConfigError
from medrefine.fusion import (
    binary_entropy,
    fuse,
    mask_disagreement,
    review_score,
    second_opinion_score,
    staple,
)


def _square(n=20, top=5, side=10):
    m = np.zeros((n, n), bool)
    m[top : top + side, top : top + side] = True
    return m


def test_staple_all_agree_gives_that_mask():
    mask = _square()
    out = staple(np.stack([mask] * 4))
    assert out.shape == mask.shape and out.dtype == np.float32
    np.testing.assert_array_equal(out > 0.5, mask)
    assert out[mask].min() > 0.99 and out[~mask].max() < 0.01


def test_staple_follows_the_majority_where_raters_err_in_different_places():
    truth = _square()
    raters = []
    for k in range(3):  # each rater adds a different false pixel block and misses another
        r = truth.copy()
        r[0:2, 6 * k : 6 * k + 2] = True
        r[6 + k, 6:8] = False
        raters.append(r)
    out = staple(np.stack(raters))
    np.testing.assert_array_equal(out > 0.5, truth)
    vote = fuse(np.stack(raters).astype(np.float32), "vote")
    np.testing.assert_array_equal(vote > 0.5, truth)


def test_staple_trusts_two_agreeing_raters_over_a_contrary_one():
    truth = _square()
    out = staple(np.stack([truth, truth, ~truth]))
    np.testing.assert_array_equal(out > 0.5, truth)


def test_staple_single_rater_and_empty():
    mask = _square()
    np.testing.assert_array_equal(staple(mask[None]), mask.astype(np.float32))
    empty = np.zeros((3, 8, 8), bool)
    out = staple(empty)
    assert np.isfinite(out).all() and out.max() < 0.5


def test_staple_keeps_nd_shape():
    d = np.zeros((3, 4, 5, 6), bool)
    d[:, 1:3, 1:4, 2:5] = True
    assert staple(d).shape == (4, 5, 6)


def test_fuse_methods():
    samples = np.array([[[0.9, 0.2]], [[0.6, 0.4]], [[0.2, 0.45]]], np.float32)  # (3, 1, 2)
    np.testing.assert_allclose(fuse(samples, "mean"), [[0.5666667, 0.35]], atol=1e-6)
    np.testing.assert_allclose(fuse(samples, "vote"), [[2 / 3, 0.0]], atol=1e-6)
    st = fuse(samples, "staple")
    assert st.shape == (1, 2) and st[0, 0] > 0.5 > st[0, 1]
    with pytest.raises(ConfigError):
        fuse(samples, "median")


def test_binary_entropy():
    assert binary_entropy(np.array(0.5)) == pytest.approx(1.0)
    p = np.array([0.0, 1e-3, 0.25, 0.75, 1.0], np.float32)
    h = binary_entropy(p)
    assert h.dtype == np.float32
    assert h[0] < 1e-4 and h[-1] < 1e-4
    assert h[2] == pytest.approx(h[3]) == pytest.approx(0.8112781, abs=1e-6)
    assert (h >= 0).all() and (h <= 1).all()


def test_review_score_zero_for_certain_masks():
    mask = _square()
    assert review_score(np.zeros(mask.shape, np.float32), mask) == 0.0
    assert review_score(np.zeros(mask.shape, np.float32), np.zeros_like(mask)) == 0.0


def test_review_score_grows_with_boundary_uncertainty():
    mask = _square(40, 10, 20)
    boundary = binary_entropy(np.clip(_blurred(mask), 0, 1))
    high = review_score(boundary, mask)
    assert high == pytest.approx(boundary.sum() / mask.sum())
    assert 0 < review_score(boundary * 0.5, mask) < high


def test_review_score_is_relative_to_the_mask_size():
    """The same width of doubt costs a small object more Dice than a large one."""
    small, large = _square(80, 30, 10), _square(80, 10, 50)
    u_small = binary_entropy(np.clip(_blurred(small), 0, 1))
    u_large = binary_entropy(np.clip(_blurred(large), 0, 1))
    assert review_score(u_small, small) > 2 * review_score(u_large, large)


def test_review_score_counts_uncertainty_outside_an_empty_mask():
    empty = np.zeros((40, 40), bool)
    far = np.zeros(empty.shape, np.float32)
    far[30:40, 30:40] = 0.9  # doubt where the mask found nothing: a possible miss
    assert review_score(far, empty) == pytest.approx(90 / max(0.01 * empty.size, 1.0))


def _blurred(mask):
    from scipy import ndimage as ndi

    return ndi.gaussian_filter(mask.astype(np.float32), 1.5)


def test_mask_disagreement_is_one_minus_dice():
    a = _square(top=5)
    b = np.roll(a, 5, axis=0)  # the same 10x10 square 5 rows down: Dice 2*50/200
    assert mask_disagreement(a, a) == 0.0
    assert mask_disagreement(a, b) == pytest.approx(0.5)
    assert mask_disagreement(a, np.zeros_like(a)) == 1.0
    assert mask_disagreement(np.zeros_like(a), np.zeros_like(a)) == 0.0  # both empty agree


def test_second_opinion_ranks_a_confident_but_disputed_mask_above_a_doubtful_agreed_one():
    confident_disputed = second_opinion_score(review=0.05, disagreement=0.4)
    doubtful_agreed = second_opinion_score(review=0.3, disagreement=0.02)
    assert confident_disputed > doubtful_agreed
    assert second_opinion_score(0.2, 0.0) == 0.2  # agreement adds nothing
