"""The "Refine a mask or box" tab: the refiner as a mask fixer for a prompt the user gives on
the uploaded image: a region painted roughly with the brush, boxes typed as pixel corners, or a
mask made by another tool. The pipeline is the one ``medrefine refine`` runs."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import gradio as gr
import numpy as np
from scipy import ndimage

from medrefine.app.files import (
    COARSE_COLOR,
    REFINED_COLOR,
    display_image01,
    ground_truth,
    read_upload,
    to_rgb,
    write_downloads,
)
from medrefine.app.models import build_pipeline, request_settings
from medrefine.app.session import Outcome, Session, readable_errors
from medrefine.errors import ConfigError, InputError
from medrefine.io import stem_of
from medrefine.prompts import parse_box
from medrefine.visualize import contours, uncertainty_heatmap


@readable_errors
def prompt_canvas(image_file: str | None, slice_index: float | None = None):
    """The uploaded image (or the chosen slice) as the brush's canvas."""
    if not image_file:
        return None
    rgb = to_rgb(display_image01(read_upload(image_file, slice_index)))
    return {"background": rgb, "layers": [], "composite": rgb}


def painted_mask(editor: dict | None, shape: tuple[int, int]) -> np.ndarray | None:
    """Brush strokes -> a filled 0/1 mask (a closed outline counts as its inside); None when
    nothing was painted."""
    layers = (editor or {}).get("layers") or []
    strokes = np.zeros(shape, bool)
    for layer in layers:
        layer = np.asarray(layer)
        if layer.ndim != 3 or layer.shape[:2] != shape:
            raise InputError(
                f"the painted layer is {layer.shape[:2]}, the image {shape}; "
                "upload the image again and repaint"
            )
        strokes |= layer[..., -1] > 0 if layer.shape[-1] == 4 else layer.max(-1) > 0
    return ndimage.binary_fill_holes(strokes).astype(np.uint8) if strokes.any() else None


def parse_boxes(text: str | None) -> list | None:
    lines = [line.strip() for line in (text or "").replace(";", "\n").splitlines()]
    return [parse_box(line) for line in lines if line] or None


@readable_errors
def refine_prompt(
    session: Session | None,
    image_file: str | None,
    slice_index: float | None,
    editor: dict | None,
    mask_file: str | None,
    boxes_text: str | None,
    source: str,
    coarse_file: str | None,
    refiner_file: str | None,
    use_diffusion: bool,
    steps: float,
    strength: float,
    auto_strength: bool,
    samples: float,
    seed: float,
    threshold: float,
    fill_holes: bool,
    keep_largest: bool,
    min_object_size: float | None,
    box_engine: str = "auto",
    progress=gr.Progress(),  # noqa: B008 (how Gradio asks for a progress tracker)
):
    """Refine the prompt (boxes, else an uploaded mask, else the painted region) on the image;
    ``box_engine`` turns boxes into a mask (``SegmentationPipeline.run``)."""
    t_start = time.perf_counter()
    session = session or Session()
    refine, post = request_settings(
        steps,
        strength,
        auto_strength,
        samples,
        seed,
        threshold,
        fill_holes,
        keep_largest,
        min_object_size,
    )
    loaded = read_upload(image_file, slice_index)
    shape = loaded.spatial_shape
    boxes = parse_boxes(boxes_text)
    mask = None
    if boxes is None and mask_file:
        mask = ground_truth(mask_file, loaded).astype(np.uint8)
    elif boxes is None:
        mask = painted_mask(editor, shape)
    if boxes is None and mask is None:
        raise InputError(
            "nothing to refine: paint over the object, type boxes (x0,y0,x1,y1) "
            "or upload a mask from another tool"
        )
    progress(0.2, desc="loading the refiner")
    pipe, notes = build_pipeline(source, coarse_file, refiner_file, True, refine, post)
    if pipe.refiner is None:
        raise ConfigError(
            "this model has no diffusion refiner; pick a preset that ships one or upload a refiner"
        )
    progress(0.4, desc="refining")
    # the preset's refiner for prompts, at its calibrated settings (auto strength); the
    # samples and seed are the request's
    fixer = pipe.fixer()
    params = replace(fixer.refiner.defaults, samples=refine["samples"], seed=refine["seed"])
    result = (
        pipe.run(loaded, boxes=boxes, refine=params, box_engine=box_engine or "auto")
        if boxes
        else fixer.run(loaded, coarse_mask=mask, refine=params)
    )
    image01 = display_image01(loaded)
    given = result.coarse_mask > 0
    session.new_request()
    session.last = Outcome(result, image01, stem_of(Path(image_file)) + "_refined")
    thickness = max(1, round(min(shape) / 250))
    both = contours(image01, [given, result.mask > 0], [COARSE_COLOR, REFINED_COLOR], thickness)
    heat = uncertainty_heatmap(result.uncertainty, image01, vmax=1.0)
    info = result.params.get("refinement", {})
    what = "the boxes" if boxes else ("the uploaded mask" if mask_file else "the painted region")
    if result.params.get("boxes_from") == "litemedsam":
        what = "LiteMedSAM's mask of the boxes"
        if result.params.get("box_engine") == "fuse":
            what += " (averaged with the refiner's own mask of them: box engine fuse)"
    status = (
        f"Refined {what} (orange) into the blue mask: strength {info.get('strength', 0):.2f}"
        + (" (auto)" if params.strength == "auto" else "")
        + {
            "kept: refiner in doubt": ". The refiner was unsure of its correction here, so the "
            "mask is kept as given.",
            "kept: good as it is": ". The refiner found the mask good as it is and kept it.",
            "kept: as asked": ". LiteMedSAM's mask is kept as it is (box engine "
            "litemedsam-only); the refiner gives its uncertainty.",
            "kept: unfamiliar image": ". The image is unlike the preset's training images "
            "(the coarse model's doubt is above any it showed on val), so the mask is kept as "
            "given; the refiner gives its uncertainty.",
        }.get(info.get("decision", ""), ".")
        + _second_opinion_text(result.params.get("review"))
        + "".join(f" {n}" for n in notes)
        + f" {1000 * (time.perf_counter() - t_start):.0f} ms."
    )
    mask_path, _ = write_downloads(session, "PNG")
    return (
        session,
        both,
        heat,
        result.review_score,
        status,
        gr.update(value=str(mask_path), interactive=True),
    )


def _second_opinion_text(review: dict | None) -> str:
    """The review score's second opinion in words (given masks and boxes with a coarse model)."""
    if not review:
        return ""
    text = (f" Review score: the refiner's doubt {review['uncertainty']:.2f} plus "
            f"{review['second_opinion_weight']:g} x its disagreement with the coarse model's own "
            f"mask (1 - Dice {review['second_opinion_disagreement']:.2f})")
    if review.get("coarse_doubt_weight"):
        text += (f" plus {review['coarse_doubt_weight']:g} x the coarse model's own doubt "
                 f"{review['coarse_doubt']:.2f}")
    return text + "."

