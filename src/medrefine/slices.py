"""An image or a volume through a pipeline's models, slice by slice: preprocessed onto the model
grid, the coarse model (or a given mask on that grid), the refiner, and back to the input's grid.

``SegmentationPipeline.run`` hands its image here and post-processes what comes back; these
functions read only the pipeline's public settings (``PipelineView``), never change it.

    slice_probs(pipe, (C, H, W), ...)     -> coarse (K, H, W), refined, uncertainty (H, W)
    volume_probs(pipe, (C, D, H, W), ...) -> coarse (K, D, H, W), refined, uncertainty (D, H, W)

Refined and uncertainty are None for a pipeline without a refiner. ``log`` collects each
refined slice's summary (``RefineOutput.summary``), which ``refinement_summary`` condenses.
Where the pipeline's ``empty_rescue`` is on and the coarse model's own mask of a 2D image is
empty, the model looks again over tiles (``medrefine.tiling``); ``notes["empty_rescue"]``
says what it found, and a mask found there is the coarse mask the refiner starts from.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from medrefine.errors import ConfigError
from medrefine.postprocess import PostprocessConfig, postprocess
from medrefine.preprocess import GridInfo, PreprocessConfig, from_grid, preprocess, to_grid
from medrefine.tiling import tiled_probs

if TYPE_CHECKING:
    from medrefine.inference import CoarseSegmenter
    from medrefine.refine import RefineParams, Refiner

Probs = tuple[np.ndarray, np.ndarray | None, np.ndarray | None]


class PipelineView(Protocol):
    """What the slice work reads of a pipeline (``SegmentationPipeline`` has all of it)."""

    @property
    def coarse(self) -> CoarseSegmenter | None: ...

    @property
    def refiner(self) -> Refiner | None: ...

    @property
    def pre_cfg(self) -> PreprocessConfig: ...

    @property
    def tta(self) -> tuple[str, ...]: ...

    @property
    def refine_params(self) -> RefineParams | None: ...

    @property
    def slice_batch(self) -> int: ...

    @property
    def post(self) -> PostprocessConfig: ...

    @property
    def empty_rescue(self) -> tuple[int, float]: ...


def slice_probs(
    pipe: PipelineView,
    image: np.ndarray,
    source_dtype: str,
    timings: dict,
    coarse_mask: np.ndarray | None = None,
    params: RefineParams | None = None,
    log: list | None = None,
    own: bool = True,
    notes: dict | None = None,
) -> Probs:
    """One 2D (C, H, W) image -> coarse, refined, uncertainty on the original grid
    (``notes``: filled with ``empty_rescue`` where the tiles were looked at)."""
    t = time.perf_counter()
    image01, grid = preprocess(image, pipe.pre_cfg, source_dtype)
    add_time(timings, "preprocess", t)
    t = time.perf_counter()
    if coarse_mask is None:
        coarse_grid = coarse_model(pipe).predict_grid(image01[None], pipe.tta)[0]
        coarse_grid = coarse_grid.cpu().numpy()
    else:
        coarse_grid = to_grid(coarse_mask[None].astype(np.float32), grid.grid_size, grid.mode)
        coarse_grid = coarse_grid[0]
    add_time(timings, "coarse", t)
    coarse = from_grid(coarse_grid, grid)
    if coarse_mask is None and pipe.empty_rescue and coarse.shape[0] == 1 and \
            not postprocess(coarse[0], pipe.post).any():
        t = time.perf_counter()
        coarse, coarse_grid, found = _rescue(pipe, image, source_dtype, coarse, coarse_grid,
                                             grid)
        add_time(timings, "empty_rescue", t)
        if notes is not None:
            n, fraction = pipe.empty_rescue
            notes["empty_rescue"] = {"tiles": n, "tile_fraction": fraction, "found": found}
    if pipe.refiner is None:
        return coarse, None, None
    refined, uncertainty = refine_slice(pipe, image01, coarse_grid[0], grid, timings,
                                        params, log, own=own)
    return coarse, refined, uncertainty


def _rescue(pipe: PipelineView, image: np.ndarray, source_dtype: str, coarse: np.ndarray,
            coarse_grid: np.ndarray, grid: GridInfo
            ) -> tuple[np.ndarray, np.ndarray, bool | None]:
    """The tiles' probabilities in place of the whole frame's where they hold a mask after
    post-processing (found True), else the frame's as they were (False; None: the image is
    too small to tile)."""
    tiled = tiled_probs(coarse_model(pipe), image, source_dtype, pipe.tta, *pipe.empty_rescue)
    if tiled is None:
        return coarse, coarse_grid, None
    if not postprocess(tiled[0], pipe.post).any():
        return coarse, coarse_grid, False
    tiled_grid, _ = to_grid(tiled, grid.grid_size, grid.mode)
    return tiled, tiled_grid, True


def volume_probs(
    pipe: PipelineView,
    volume: np.ndarray,
    source_dtype: str,
    timings: dict,
    coarse_mask: np.ndarray | None = None,
    params: RefineParams | None = None,
    log: list | None = None,
    own: bool = True,
) -> Probs:
    """(C, D, H, W) -> coarse (K, D, H, W), refined and uncertainty (D, H, W).

    Slices are preprocessed one by one (as 2D images are) and go through the coarse model
    ``slice_batch`` at a time; refinement runs per slice, each with the same seed, so a
    slice gets the mask it would get as a 2D image. Outputs are filled in place, so memory
    holds the volume's probabilities once, not a list of per-slice copies.
    """
    depth = volume.shape[1]
    coarse = refined = uncertainty = None
    for start in range(0, depth, pipe.slice_batch):
        slices = range(start, min(start + pipe.slice_batch, depth))
        t = time.perf_counter()
        prepared = [preprocess(volume[:, d], pipe.pre_cfg, source_dtype) for d in slices]
        image01 = np.stack([p[0] for p in prepared])  # (B, C, h, w) on the model grid
        add_time(timings, "preprocess", t)
        t = time.perf_counter()
        if coarse_mask is None:
            coarse_grid = coarse_model(pipe).predict_grid(image01, pipe.tta).cpu().numpy()
        else:
            grid = prepared[0][1]
            given = [coarse_mask[d][None].astype(np.float32) for d in slices]
            coarse_grid = np.stack([to_grid(m, grid.grid_size, grid.mode)[0] for m in given])
        add_time(timings, "coarse", t)  # coarse_grid: (B, K, h, w)
        for i, d in enumerate(slices):
            grid = prepared[i][1]
            slice_coarse = from_grid(coarse_grid[i], grid)  # (K, H, W)
            if coarse is None:
                coarse = np.empty(
                    (slice_coarse.shape[0], depth, *slice_coarse.shape[1:]), np.float32
                )
                if pipe.refiner is not None:
                    refined = np.empty((depth, *slice_coarse.shape[1:]), np.float32)
                    uncertainty = np.empty_like(refined)
            coarse[:, d] = slice_coarse
            if pipe.refiner is not None:
                refined[d], uncertainty[d] = refine_slice(
                    pipe, image01[i], coarse_grid[i, 0], grid, timings, params, log,
                    own=own,
                )
    return coarse, refined, uncertainty


def refine_slice(
    pipe: PipelineView, image01: np.ndarray, coarse_grid: np.ndarray, grid, timings: dict,
    params: RefineParams | None = None, log: list | None = None, own: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """image01 (C, h, w) and coarse probs (h, w) on the grid -> refined, uncertainty (H, W);
    ``own``: the coarse model's mask, not a given one."""
    t = time.perf_counter()
    out = pipe.refiner.refine_grid(image01, coarse_grid, params or pipe.refine_params, own=own)
    add_time(timings, "refine", t)
    if log is not None:
        log.append(out.summary())
    both = from_grid(np.stack([out.probs, out.uncertainty]), grid)
    return both[0], both[1]


def coarse_model(pipe: PipelineView) -> CoarseSegmenter:
    if pipe.coarse is None:
        raise ConfigError("this pipeline has no coarse model; pass a mask to refine")
    return pipe.coarse


def refinement_summary(log: list[dict]) -> dict[str, Any]:
    """What refinement did: for one slice its strength, disagreement and whether it left the
    input alone; for a volume, the same over its slices."""
    if len(log) == 1:
        return log[0]
    strengths = [e["strength"] for e in log]
    decisions: dict[str, int] = {}
    for e in log:
        decisions[e["decision"]] = decisions.get(e["decision"], 0) + 1
    return {"slices": len(log), "strength_min": min(strengths), "strength_max": max(strengths),
            "left_alone_slices": int(sum(e["left_alone"] for e in log)),
            "decisions": decisions}


def add_time(timings: dict[str, float], key: str, since: float) -> None:
    timings[key] = timings.get(key, 0.0) + time.perf_counter() - since
