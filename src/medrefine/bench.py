"""Speed and memory figures (``medrefine bench``): medians over repeated runs after warm-up.

Nothing here is a test: it prints what this machine does. Run it with nothing else busy;
two torch jobs on the same cores slow each other many times over.
"""

from __future__ import annotations

import logging
import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medrefine import __version__
from medrefine.errors import ConfigError
from medrefine.io import read_image, read_mask, write_mask
from medrefine.pipeline import SegmentationPipeline
from medrefine.postprocess import postprocess
from medrefine.presets import DEFAULT_EMPTY_RESCUE, get_preset, sample_path
from medrefine.prompts import mask_boxes
from medrefine.refine import RefineParams
from medrefine.tiling import tiled_probs

logger = logging.getLogger(__name__)


def timeit(fn: Callable[[], Any], repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median and spread (p10..p90) of ``fn``'s wall time in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    q = np.percentile(times, [10, 90])
    return {"median_s": statistics.median(times), "p10_s": float(q[0]), "p90_s": float(q[1]),
            "n": repeats}


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB.

    Linux's VmHWM first: it belongs to this program's own memory map. ``ru_maxrss`` (the
    fallback elsewhere) survives exec, so a child started by a large parent (a test run)
    reports the parent's peak as its own.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_bench(preset: str = "polyp", quick: bool = False, device: str = "cpu",
              threads: int | None = None, backends: tuple[str, ...] | None = None
              ) -> dict[str, Any]:
    """All figures for ``preset``; ``backends`` (e.g. ``("torch", "onnx")``) adds a
    ``backends`` section comparing them (see ``bench_backends``)."""
    if threads:
        torch.set_num_threads(threads)
    reps = 5 if quick else 20
    image_path = sample_path(preset)
    pipe = SegmentationPipeline(preset=preset, device=device)
    coarse, refiner = pipe.coarse, pipe.refiner
    loaded = read_image(image_path)
    dtype = loaded.meta["source_dtype"]
    image01, grid = coarse.prepare(loaded.array, dtype)
    coarse_grid = coarse.predict_grid(image01[None])[0].cpu().numpy()
    params = pipe.refine_params
    out: dict[str, Any] = {
        "medrefine_version": __version__, "preset": preset, "image": str(image_path.name),
        "image_size": list(loaded.spatial_shape), "grid": list(coarse.pre_cfg.size),
        "threads": torch.get_num_threads(), "device": str(coarse.device),
        "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
        "refine_defaults": vars(params) if params else None,
    }
    stages: dict[str, Any] = {}
    stages["load"] = timeit(lambda: read_image(image_path), reps)
    stages["preprocess"] = timeit(lambda: coarse.prepare(loaded.array, dtype), reps)
    stages["coarse"] = timeit(lambda: coarse.predict_grid(image01[None]), reps)
    first = pipe.run(loaded)
    probs = first.refined_probs if first.refined_probs is not None else first.coarse_probs
    stages["postprocess"] = timeit(lambda: postprocess(probs, pipe.post), reps)
    with tempfile.TemporaryDirectory() as tmp:
        mask = pipe.run(loaded).mask
        stages["write_png"] = timeit(lambda: write_mask(mask, Path(tmp) / "m.png"), reps)
    if refiner is not None:
        stages["refine_default"] = timeit(
            lambda: refiner.refine_grid(image01, coarse_grid[0], params), reps)
        one = replace(params, steps=1)
        stages["refine_one_step"] = timeit(
            lambda: refiner.refine_grid(image01, coarse_grid[0], one), reps)
    gate = pipe.models.presence
    if gate is not None:  # the preset's image-level gate (medrefine.presence)
        stages["presence"] = timeit(lambda: gate.probability(image01, pipe.tta), reps)
    if coarse.model_cfg.num_classes == 1:  # --empty-rescue's second look, on empty frames only
        tiles = pipe.empty_rescue or get_preset(preset).empty_rescue or DEFAULT_EMPTY_RESCUE
        stages["empty_rescue_tiles"] = timeit(
            lambda: tiled_probs(coarse, loaded.array, dtype, pipe.tta, *tiles), reps)
    out["stages"] = stages
    pipe_coarse = SegmentationPipeline(preset=preset, device=device, use_diffusion=False)
    out["end_to_end"] = {"coarse_only": timeit(lambda: pipe_coarse.run(image_path), reps)}
    if gate is not None:  # side by side: the same run without the gate
        ungated = SegmentationPipeline.from_models(replace(pipe_coarse.models, presence=None))
        out["end_to_end"]["coarse_only_without_presence"] = timeit(
            lambda: ungated.run(image_path), reps)
    if refiner is not None:
        out["end_to_end"]["refined_default"] = timeit(lambda: pipe.run(image_path), reps)
        # ``medrefine refine --preset`` on another tool's mask and on boxes: the sample's
        # shipped mask and its boxes, strength auto (refine's default), load to post-processed
        # mask, with the coarse model's second opinion for the review score; and the refiner
        # alone (``for_refinement``: own weights, no coarse model, no second opinion)
        auto = {"strength": "auto"}  # over the defaults of whichever refiner runs
        full = SegmentationPipeline(preset=preset, device=device, refine=auto)
        fixer = SegmentationPipeline.for_refinement(preset=preset, device=device, refine=auto)
        given = read_mask(image_path.with_name(f"{image_path.stem}_mask.png")) > 0
        boxes = mask_boxes(given)
        out["end_to_end"]["refine_mask_auto"] = timeit(
            lambda: full.run(image_path, coarse_mask=given), reps)
        out["end_to_end"]["refine_boxes_auto"] = timeit(
            lambda: full.run(image_path, boxes=boxes), reps)
        out["end_to_end"]["refine_mask_auto_refiner_only"] = timeit(
            lambda: fixer.run(image_path, coarse_mask=given), reps)
        out["box_engine_auto"] = full.box_engine("auto")
        out["end_to_end"].update(_box_engines(full, image_path, loaded, boxes, reps, device))
        if "onnx-int8" in (backends or ()) and device == "cpu":
            # side by side: the preset's default box engine with every model on int8 ONNX
            # graphs, LiteMedSAM's image encoder among them (litemedsam.load_litemedsam)
            int8 = SegmentationPipeline(preset=preset, device=device, refine=auto,
                                        backend="onnx", quantized=True)
            out["end_to_end"].update(_box_engines(int8, image_path, loaded, boxes, reps,
                                                  device, engines=("auto",),
                                                  suffix="_onnx-int8"))
    for batch in (1, 4, 8) if not quick else (1, 4):
        x = np.repeat(image01[None], batch, 0)
        t = timeit(lambda x=x: coarse.predict_grid(x), max(3, reps // 2))
        out.setdefault("coarse_batch", {})[str(batch)] = {
            **t, "images_per_s": batch / t["median_s"]}
    if refiner is not None:
        grid_steps = (5, 10, 25) if not quick else (5,)
        grid_samples = (1, 4, 8) if not quick else (1, 4)
        for steps in grid_steps:
            for samples in grid_samples:
                p = replace(params, steps=steps, samples=samples)
                t = timeit(lambda p=p: refiner.refine_grid(image01, coarse_grid[0], p),
                           max(3, reps // 4), warmup=1)
                out.setdefault("refine_grid", []).append({"steps": steps, "samples": samples,
                                                          **t})
    if backends:
        out["backends"] = bench_backends(backends, pipe.coarse_paths, pipe.refiner_path, image01,
                                         coarse_grid[0], reps, device)
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def _box_engines(pipe: SegmentationPipeline, image_path: Path, loaded, boxes, reps: int,
                 device: str, engines: tuple[str, ...] = ("refiner", "litemedsam", "fuse"),
                 suffix: str = "") -> dict[str, Any]:
    """``refine --box`` with each engine, side by side with LiteMedSAM alone (its mask of the
    boxes from the loaded image, without the refiner, on ``pipe``'s backend): the figures of
    ``--box-engine``, named with ``suffix``. Empty where LiteMedSAM is not installed (the
    refiner engine is ``refine_boxes_auto`` then)."""
    from medrefine.litemedsam import load_litemedsam

    try:
        lite = load_litemedsam(device, quantized=pipe.backend.get("quantized", False))
    except ConfigError as err:
        logger.warning("bench: no LiteMedSAM rows (%s)", err)
        return {}
    dtype = loaded.meta["source_dtype"]
    rows = {f"litemedsam_alone{suffix}": timeit(lambda: lite.predict(loaded.array, boxes, dtype),
                                                reps)}
    for engine in engines:
        rows[f"refine_boxes_{engine}{suffix}"] = timeit(
            lambda engine=engine: pipe.run(image_path, boxes=boxes, box_engine=engine), reps)
    return rows


BACKENDS = ("torch", "onnx", "onnx-int8")


def bench_backends(backends: tuple[str, ...], coarse_weights: str | Path | list[Path],
                   refiner_weights: str | Path | None, image01: np.ndarray,
                   coarse_grid: np.ndarray, reps: int, device: str = "cpu") -> dict[str, Any]:
    """Per backend (``torch``, ``onnx``, ``onnx-int8``): ``load_s`` (building the pipeline,
    once; the first ONNX use includes the export), and timings of the coarse model on
    image01 (C, H, W) and of one refinement of coarse_grid (H, W) at the refiner's defaults.
    Every backend refines the same coarse mask."""
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise ConfigError(f"unknown backend(s) {unknown}; choose from {BACKENDS}")
    out: dict[str, Any] = {}
    for name in backends:
        t = time.perf_counter()
        pipe = SegmentationPipeline(coarse_weights, refiner_weights, device=device,
                                    use_diffusion=refiner_weights is not None,
                                    backend="onnx" if name.startswith("onnx") else "torch",
                                    quantized=name == "onnx-int8")
        row: dict[str, Any] = {"load_s": time.perf_counter() - t}
        row["coarse"] = timeit(lambda pipe=pipe: pipe.coarse.predict_grid(image01[None]), reps)
        if pipe.refiner is not None:
            row["refine_default"] = timeit(
                lambda pipe=pipe: pipe.refiner.refine_grid(image01, coarse_grid,
                                                           pipe.refine_params), reps)
        out[name] = row
    return out


def format_table(result: dict[str, Any]) -> str:
    lines = [f"medrefine {result['medrefine_version']} bench: preset {result['preset']}, "
             f"image {result['image']} {result['image_size']}, grid {result['grid']}, "
             f"{result['threads']} threads, {result['device']}"
             + (f"; box engine auto = {result['box_engine_auto']}"
                if "box_engine_auto" in result else "")]
    lines.append(f"{'stage':<30}{'median ms':>12}{'p10..p90 ms':>20}")
    for name, t in {**result["stages"], **{f"end-to-end {k}": v for k, v in
                                           result["end_to_end"].items()}}.items():
        lines.append(f"{name:<30}{t['median_s'] * 1000:>12.1f}"
                     f"{t['p10_s'] * 1000:>10.1f}..{t['p90_s'] * 1000:<8.1f}")
    for b, t in result.get("coarse_batch", {}).items():
        lines.append(f"coarse batch {b:<9}{t['median_s'] * 1000:>12.1f}   "
                     f"{t['images_per_s']:.1f} images/s")
    for row in result.get("refine_grid", []):
        lines.append(f"refine {row['steps']:>2} steps x {row['samples']} samples"
                     f"{row['median_s'] * 1000:>8.1f}")
    for name, row in result.get("backends", {}).items():
        refine = row.get("refine_default")
        lines.append(f"backend {name:<10} coarse {row['coarse']['median_s'] * 1000:.1f} ms"
                     + (f", refine {refine['median_s'] * 1000:.1f} ms" if refine else "")
                     + f" (load {row['load_s']:.1f} s)")
    lines.append(f"peak resident memory: {result['peak_rss_mb']:.0f} MB")
    return "\n".join(lines)


__all__ = ["RefineParams", "bench_backends", "format_table", "run_bench", "timeit"]
