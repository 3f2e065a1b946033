"""Inpainting speed and memory (``medrefine bench --inpaint``): one 512-px chest X-ray (the
shipped ``cxr_lungs.jpg`` sample) with a seeded rib-band mask, medians over repeated runs
after warm-up, for the default and a few other steps x samples settings; peak resident memory
of the process. Nothing here is a test: it prints what this machine does."""

from __future__ import annotations

import platform
from typing import Any

import numpy as np
import torch

from medrefine.bench import peak_rss_mb, timeit
from medrefine.inpaint import masks as M
from medrefine.inpaint.pipeline import InpaintingPipeline, as_source_dtype


def bench_inpaint(preset: str = "inpaint", weights=None, quick: bool = False,
                  threads: int | None = None, onnx_dir=None) -> dict[str, Any]:
    from medrefine.io import read_image
    from medrefine.presets import sample_path

    if threads:
        torch.set_num_threads(threads)
    image = as_source_dtype(read_image(sample_path("lung")))
    if image.ndim == 3:
        image = image[0]
    hole = M.rib_bands(image.shape, np.random.default_rng(0))
    pipe = InpaintingPipeline(preset, weights=weights)
    repeats = 3 if quick else 7
    settings = [(pipe.steps, pipe.samples)]
    if not quick:
        settings += [s for s in ((1, 1), (2, 2), (4, 4), (8, 4)) if s not in settings]
    rows = []
    for steps, samples in settings:
        p = InpaintingPipeline(preset, weights=weights, steps=steps, samples=samples)
        stats = timeit(lambda p=p: p.run(image, hole), repeats, warmup=1)
        rows.append({"steps": steps, "samples": samples, **stats,
                     "default": (steps, samples) == settings[0]})
    result = {"image": f"{sample_path('lung').name} {image.shape[1]}x{image.shape[0]}",
              "hole_fraction": float(hole.mean()), "threads": torch.get_num_threads(),
              "cpu": platform.processor() or platform.machine(), "params": pipe.params(),
              "runs": rows, "peak_rss_mb": peak_rss_mb()}
    if onnx_dir is not None:
        from medrefine.inpaint.export import onnx_step
        from medrefine.inpaint.sample import sample_fill

        result["onnx"] = {}
        for name in ("inpaint_step.onnx", "inpaint_step.int8.onnx"):
            graph = onnx_dir / name
            if graph.is_file():
                step = onnx_step(graph)
                s = pipe.cfg.size
                grid = np.random.default_rng(0).random((s, s)).astype(np.float32)
                h = M.rib_bands((s, s), np.random.default_rng(0))
                stats = timeit(lambda step=step, h=h, grid=grid: sample_fill(
                    step, pipe.schedule, grid, h, grid, pipe.steps, pipe.samples), repeats, 1)
                result["onnx"][name] = {"sampling_only": stats}
        result["peak_rss_mb"] = peak_rss_mb()
    return result


def format_inpaint_table(result: dict[str, Any]) -> str:
    lines = [f"inpainting {result['image']}, hole {result['hole_fraction']:.1%}, "
             f"{result['threads']} threads",
             f"{'steps':>6}{'samples':>9}{'median s':>10}{'p10..p90 s':>16}"]
    for r in result["runs"]:
        lines.append(f"{r['steps']:>6}{r['samples']:>9}{r['median_s']:>10.2f}"
                     f"{r['p10_s']:>9.2f}..{r['p90_s']:.2f}" + ("  (default)" if r["default"]
                                                              else ""))
    for name, entry in (result.get("onnx") or {}).items():
        s = entry["sampling_only"]
        lines.append(f"ONNX {name}: sampling only {s['median_s']:.2f} s")
    lines.append(f"peak resident memory {result['peak_rss_mb']:.0f} MB")
    return "\n".join(lines)
