"""The from-noise comparison runs the three samplers on the same denoiser and reports them."""

from __future__ import annotations

import numpy as np
from PIL import Image

from medrefine.compare import compare_from_noise, format_comparison
from medrefine.pipeline import SegmentationPipeline


def test_compare_from_noise_reports_each_method(tmp_path, tiny_weights):
    pipe = SegmentationPipeline(tiny_weights["coarse"], tiny_weights["refiner"], device="cpu")
    rng = np.random.default_rng(0)
    image = tmp_path / "a.png"
    mask = tmp_path / "a_mask.png"
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(image)
    gt = np.zeros((40, 48), np.uint8)
    gt[10:30, 12:36] = 255
    Image.fromarray(gt).save(mask)
    result = compare_from_noise(pipe, [(image, mask)], samples=2, ddpm_steps=6, ddim_steps=3)
    assert set(result["methods"]) == {"refine", "ddpm_6", "ddim_3"}
    assert result["methods"]["ddpm_6"]["params"]["samples"] == 2
    assert result["methods"]["ddpm_6"]["from_noise"]
    assert not result["methods"]["refine"]["from_noise"]
    for m in result["methods"].values():
        assert 0.0 <= m["mean_dice"] <= 1.0 and m["median_s_per_image"] > 0
    assert result["methods"]["refine"]["times_slower_than_refine"] == 1.0
    assert "ddpm_6" in format_comparison(result)
