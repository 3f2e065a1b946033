"""The model a request runs: presets or uploaded weights, the settings they start from, and
the pipeline built for one request over models shared by all sessions."""

from __future__ import annotations

import functools
from typing import Any

import gradio as gr

from medrefine.app.microbatch import ModelLane, batched_pipeline
from medrefine.app.session import readable_errors
from medrefine.checkpoint import file_sha256, read_info
from medrefine.errors import ConfigError, InputError
from medrefine.pipeline import SegmentationPipeline
from medrefine.postprocess import PostprocessConfig
from medrefine.presets import DEFAULT_PRESET, PRESETS, get_preset
from medrefine.refine import RefineParams

UPLOADED = "uploaded weights"


def available_presets() -> list[str]:
    """Presets whose coarse weights are installed (a preset without them is not offered)."""
    return [name for name, preset in PRESETS.items() if preset.coarse_weights.is_file()]


def default_source(presets: list[str] | None = None) -> str:
    """The model the page starts with: the default preset when installed, else the first one."""
    presets = available_presets() if presets is None else presets
    return DEFAULT_PRESET if DEFAULT_PRESET in presets else ([*presets, UPLOADED])[0]


def warm_up(source: str) -> None:
    """Load ``source``'s models before the first request (the page's default, with diffusion
    on as the page starts), so the first browsers do not wait for them."""
    if source != UPLOADED:
        _cached_pipeline(source, None, None, get_preset(source).refiner_weights.is_file(), "")


def model_defaults(
    source: str, refiner_file: str | None = None
) -> tuple[RefineParams, PostprocessConfig]:
    """The refiner's tuned settings and the post-processing a model source starts from."""
    if source == UPLOADED:
        refiner, post = refiner_file, PostprocessConfig()
    else:
        preset = get_preset(source)
        refiner = preset.refiner_weights if preset.refiner_weights.is_file() else None
        post = preset.postprocess
    params = (
        RefineParams(**read_info(refiner).get("refine_defaults", {})) if refiner else RefineParams()
    )
    return params, post


def model_note(source: str) -> str:
    if source == UPLOADED:
        return (
            "Upload a coarse model and, for diffusion refinement, a refiner "
            "(`.safetensors` files written by `medrefine train`)."
        )
    preset = get_preset(source)
    note = f"**{source}**: {preset.description}."
    if not preset.refiner_weights.is_file():
        note += " Its diffusion refiner is not installed yet: results are coarse only."
    return note


_LANE: ModelLane | None = None


def use_model_lane(max_batch: int) -> None:
    """Run the shared pipelines' networks in one ``ModelLane`` that batches up to
    ``max_batch`` waiting calls (the server does this; 0 = none: each request runs its
    networks in its own thread). Pipelines loaded before keep their way."""
    global _LANE
    if max_batch < 0:
        raise ConfigError(f"max_batch must be 0 (no lane) or more, got {max_batch}")
    _LANE = ModelLane(max_batch) if max_batch else None
    _cached_pipeline.cache_clear()


@functools.lru_cache(maxsize=4)
def _cached_pipeline(
    preset: str | None, coarse: str | None, refiner: str | None, use_diffusion: bool, digest: str,
    empty_rescue: bool = False,
) -> SegmentationPipeline:
    """Loaded models, shared read-only by all sessions (``digest``: uploaded files' content;
    ``empty_rescue``: look again over tiles where the own mask is empty, else the preset's
    choice)."""
    pipe = SegmentationPipeline(coarse, refiner, use_diffusion=use_diffusion, preset=preset,
                                empty_rescue="on" if empty_rescue else "auto")
    return pipe if _LANE is None else batched_pipeline(pipe, _LANE)


def build_pipeline(
    source: str,
    coarse_file: str | None,
    refiner_file: str | None,
    use_diffusion: bool,
    refine: dict[str, Any],
    post: dict[str, Any],
    empty_rescue: bool = False,
) -> tuple[SegmentationPipeline, list[str]]:
    """A pipeline for one request (its own settings over shared models) and notes for the user.

    A missing refiner (preset not fully installed, or none uploaded) falls back to coarse only.
    ``empty_rescue``: the "look again over tiles" switch (``--empty-rescue on``)."""
    notes: list[str] = []
    if source == UPLOADED:
        if not coarse_file:
            raise InputError(
                "'uploaded weights' is selected but no coarse model was uploaded; "
                "upload a coarse .safetensors file or pick a preset"
            )
        if use_diffusion and not refiner_file:
            notes.append("No refiner uploaded: showing the coarse mask only.")
            use_diffusion = False
        refiner = refiner_file if use_diffusion else None
        digest = "|".join(file_sha256(p) for p in (coarse_file, refiner) if p)
        cached = _cached_pipeline(None, coarse_file, refiner, use_diffusion, digest,
                                  bool(empty_rescue))
    else:
        preset = get_preset(source)
        if use_diffusion and not preset.refiner_weights.is_file():
            notes.append(
                f"The {source} preset's diffusion refiner is not installed yet: "
                "showing the coarse mask only."
            )
            use_diffusion = False
        cached = _cached_pipeline(source, None, None, use_diffusion, "", bool(empty_rescue))
    # settings are per request (the refiner's defaults with the request's changes, the
    # preset's post-processing with its switches); the models stay shared
    pipe = cached.with_settings(refine, postprocess_from(cached.models.postprocess, **post))
    return pipe, notes


def postprocess_from(
    base: PostprocessConfig,
    threshold: float,
    fill_holes: bool,
    keep_largest: bool,
    min_object_size: float | None,
) -> PostprocessConfig:
    """``base`` with the UI's switches (``PostprocessConfig.with_switches``, the command
    line's rule; unchanged switches give ``base`` back)."""
    return base.with_switches(
        threshold=float(threshold),
        fill_holes=bool(fill_holes),
        keep_largest=bool(keep_largest),
        min_object_size=int(min_object_size or 0),
    )


def request_settings(
    steps, strength, auto_strength, samples, seed, threshold, fill_holes, keep_largest, min_size
):
    """The UI's setting fields as ``build_pipeline``'s ``refine`` and ``post`` (an emptied
    number field is refused)."""
    if seed is None or steps is None or samples is None:
        raise ConfigError("steps, samples and seed must be numbers; fill in the empty field")
    refine = {
        "steps": int(steps),
        "strength": "auto" if auto_strength else float(strength),
        "samples": int(samples),
        "seed": int(seed),
    }
    post = {
        "threshold": threshold,
        "fill_holes": fill_holes,
        "keep_largest": keep_largest,
        "min_object_size": min_size,
    }
    return refine, post


# ---------------------------------------------------------------- settings that follow the model
def _setting_updates(params: RefineParams, post: PostprocessConfig) -> list[dict]:
    auto = params.strength == "auto"
    return [
        gr.update(value=params.steps),
        gr.update(value=RefineParams().strength if auto else params.strength),
        gr.update(value=auto),
        gr.update(value=params.samples),
        gr.update(value=params.seed),
        gr.update(value=post.threshold),
        gr.update(value=post.fill_holes),
        gr.update(value=post.keep_largest or post.keep_top_k == 1),
        gr.update(value=post.min_object_size),
    ]


def has_refiner(source: str, refiner_file: str | None = None) -> bool:
    if source == UPLOADED:
        return bool(refiner_file)
    return get_preset(source).refiner_weights.is_file()


@readable_errors
def change_source(source: str, refiner_file: str | None):
    """A new model source: show/hide the weights uploads, reset settings to its defaults, and
    offer diffusion refinement only where there is a refiner (uploads: once one is given)."""
    params, post = model_defaults(source, refiner_file)
    refinable = source == UPLOADED or has_refiner(source)
    return [
        gr.update(visible=source == UPLOADED),
        model_note(source),
        gr.update(value=refinable, interactive=refinable),
        *_setting_updates(params, post),
    ]


@readable_errors
def change_refiner_upload(source: str, refiner_file: str | None):
    """An uploaded refiner brings its tuned refinement settings."""
    if source != UPLOADED or not refiner_file:
        return [gr.update()] * 5
    return _setting_updates(*model_defaults(source, refiner_file))[:5]
