"""Boxes as prompts: parsing, clipping, masks, one box per object, jitter bounds."""

from __future__ import annotations

import numpy as np
import pytest

from medrefine.errors import InputError
from medrefine.prompts import boxes_to_mask, check_boxes, jitter_box, mask_boxes, parse_box


def test_parse_box():
    assert parse_box("10, 20,30.5,40") == (10.0, 20.0, 30.5, 40.0)
    for bad in ("1,2,3", "a,b,c,d", "1,2,3,nan", ""):
        with pytest.raises(InputError, match="four numbers"):
            parse_box(bad)


def test_boxes_to_mask_clips_and_orders_corners():
    mask = boxes_to_mask([(2, 1, 5, 3), (9, 9, 6, 7)], (8, 8))  # second: corners swapped, clipped
    assert mask.dtype == np.uint8 and mask.shape == (8, 8)
    assert mask[1:3, 2:5].all() and mask[7:8, 6:8].all()
    assert mask.sum() == 3 * 2 + 2 * 1
    assert check_boxes([(-5, -5, 3, 3)], (8, 8)) == [(0.0, 0.0, 3.0, 3.0)]
    with pytest.raises(InputError, match="holds no pixel"):
        boxes_to_mask([(10, 10, 20, 20)], (8, 8))
    with pytest.raises(InputError, match="no box"):
        boxes_to_mask([], (8, 8))


def test_mask_boxes_one_per_object():
    mask = np.zeros((40, 50), np.uint8)
    mask[5:10, 3:13] = 1
    mask[20:35, 30:45] = 1
    mask[0, 49] = 1  # a speck below min_fraction: no box
    assert sorted(mask_boxes(mask)) == [(3.0, 5.0, 13.0, 10.0), (30.0, 20.0, 45.0, 35.0)]
    rectangles = mask.copy()
    rectangles[0, 49] = 0
    assert np.array_equal(boxes_to_mask(mask_boxes(mask), mask.shape), rectangles)


@pytest.mark.parametrize("seed", range(5))
def test_jitter_box_stays_within_the_fraction(seed):
    box = (10.0, 20.0, 110.0, 70.0)
    out = jitter_box(box, 0.05, np.random.default_rng(seed))
    assert all(abs(a - b) <= 0.05 * s + 1e-9 for a, b, s in zip(out, box, (100, 50, 100, 50),
                                                                strict=True))
