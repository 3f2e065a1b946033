"""Our refinement against sampling from pure noise (how MedSegDiff samples), on the same
denoiser and the same images: speed and Dice side by side.

* ``refine``: the refiner's defaults: a few DDIM steps from the noised coarse mask.
* ``ddpm_1000``: 1000 ancestral DDPM steps from pure noise (DDIM with eta = 1 on the full
  grid is DDPM's sampler), ``samples`` samples fused by their mean.
* ``ddim_50``: 50 deterministic DDIM steps from pure noise, ``samples`` samples.

The from-noise samplers still see the coarse mask as conditioning (the denoiser takes it as an
input); they only give up starting from it.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from medrefine.io import read_image, read_mask
from medrefine.metrics import dice
from medrefine.pipeline import SegmentationPipeline
from medrefine.preprocess import from_grid


def compare_from_noise(pipe: SegmentationPipeline, cases: list[tuple[Path, Path]],
                       samples: int = 5, ddpm_steps: int = 1000, ddim_steps: int = 50
                       ) -> dict[str, Any]:
    """cases: (image, ground-truth mask) pairs. Returns per-method median seconds per image,
    mean Dice, and the speed ratios to our default refinement."""
    if pipe.refiner is None or pipe.coarse is None:
        raise ValueError("the comparison needs a pipeline with a coarse model and a refiner")
    refiner, params = pipe.refiner, pipe.refine_params
    methods = {
        "refine": (params, False),
        f"ddpm_{ddpm_steps}": (replace(params, steps=ddpm_steps, samples=samples, eta=1.0), True),
        f"ddim_{ddim_steps}": (replace(params, steps=ddim_steps, samples=samples, eta=0.0), True),
    }
    rows: dict[str, dict[str, list[float]]] = {m: {"seconds": [], "dice": []} for m in methods}
    coarse_dice = []
    for image_path, mask_path in cases:
        loaded = read_image(image_path)
        gt = read_mask(mask_path) > 0
        image01, grid = pipe.coarse.prepare(loaded.array, loaded.meta["source_dtype"])
        coarse_grid = pipe.coarse.predict_grid(image01[None])[0, 0].cpu().numpy()
        coarse_dice.append(dice(from_grid(coarse_grid[None], grid)[0] > 0.5, gt))
        for name, (p, from_noise) in methods.items():
            t = time.perf_counter()
            out = refiner.refine_grid(image01, coarse_grid, p, from_noise=from_noise)
            rows[name]["seconds"].append(time.perf_counter() - t)
            rows[name]["dice"].append(dice(from_grid(out.probs[None], grid)[0] > 0.5, gt))
    result: dict[str, Any] = {"n_images": len(cases), "samples_from_noise": samples,
                              "coarse_dice": float(np.mean(coarse_dice)), "methods": {}}
    for name, r in rows.items():
        result["methods"][name] = {
            "median_s_per_image": statistics.median(r["seconds"]),
            "mean_dice": float(np.mean(r["dice"])),
            "params": vars(methods[name][0]), "from_noise": methods[name][1]}
    base = result["methods"]["refine"]["median_s_per_image"]
    for m in result["methods"].values():
        m["times_slower_than_refine"] = m["median_s_per_image"] / base
    return result


def format_comparison(result: dict[str, Any]) -> str:
    lines = [f"refinement vs sampling from noise ({result['n_images']} images, coarse Dice "
             f"{result['coarse_dice']:.4f}):",
             f"{'method':<12}{'s/image':>10}{'Dice':>9}{'x slower than refine':>24}"]
    for name, m in result["methods"].items():
        lines.append(f"{name:<12}{m['median_s_per_image']:>10.3f}{m['mean_dice']:>9.4f}"
                     f"{m['times_slower_than_refine']:>24.1f}")
    return "\n".join(lines)
