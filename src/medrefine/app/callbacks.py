"""The callbacks that run the pipeline: the previews, the single tab (``segment_image`` and
its downloads) and the batch tab (``segment_batch``)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import gradio as gr

from medrefine.app.files import (
    COARSE_COLOR,
    REFINED_COLOR,
    display_image01,
    ground_truth,
    read_upload,
    to_rgb,
    write_batch_masks,
    write_batch_zip,
    write_downloads,
)
from medrefine.app.models import build_pipeline, request_settings
from medrefine.app.session import Outcome, Session, readable_errors
from medrefine.batch import Batch, Job
from medrefine.batch.inputs import unique_stems
from medrefine.batch.segment import SegmentTask
from medrefine.errors import InputError
from medrefine.io import read_image, stem_of
from medrefine.io.formats import mask_formats
from medrefine.metrics import segmentation_metrics
from medrefine.pipeline import SegmentationPipeline
from medrefine.visualize import contours, overlay, uncertainty_heatmap

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------- previews
@readable_errors
def preview_image(image_file: str | None, slice_index: float | None = None):
    """On upload: the picture, and the slice slider (shown for volumes only)."""
    if not image_file:
        return None, gr.update(visible=False, value=0)
    loaded = read_image(image_file)
    if not loaded.is_volume:
        return to_rgb(display_image01(loaded)), gr.update(visible=False, value=0)
    depth = loaded.array.shape[1]
    index = depth // 2 if slice_index is None else min(int(slice_index), depth - 1)
    picture = to_rgb(display_image01(read_image(image_file, slice=index)))
    return picture, gr.update(visible=True, minimum=0, maximum=depth - 1, value=index)


@readable_errors
def preview_slice(image_file: str | None, slice_index: float):
    return to_rgb(display_image01(read_upload(image_file, slice_index))) if image_file else None


# ---------------------------------------------------------------- one image
@readable_errors
def segment_image(
    session: Session | None,
    image_file: str | None,
    gt_file: str | None,
    slice_index: float | None,
    mask_format: str,
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
    empty_rescue: bool = False,
    progress=gr.Progress(),  # noqa: B008 (how Gradio asks for a progress tracker)
):
    """Segment one image (or a volume's slice) and fill every output of the single tab."""
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
    progress(0.05, desc="reading the image")
    loaded = read_upload(image_file, slice_index)
    gt = ground_truth(gt_file, loaded) if gt_file else None
    progress(0.15, desc="loading the model")
    pipe, notes = build_pipeline(source, coarse_file, refiner_file, use_diffusion, refine, post,
                                 empty_rescue)
    if pipe.refiner is not None:
        p = pipe.refine_params
        progress(0.3, desc=f"coarse mask, then {p.steps} diffusion steps x {p.samples} samples")
    else:
        progress(0.3, desc="coarse mask")
    result = pipe.run(loaded)
    progress(0.85, desc="drawing the results")
    image01 = display_image01(loaded)
    stem = stem_of(Path(image_file)) + (
        f"_slice{loaded.meta['slice']}" if "slice" in loaded.meta else ""
    )
    session.new_request()
    session.last = Outcome(result, image01, stem)
    coarse_mask, final_mask = result.coarse_mask > 0, result.mask > 0
    thickness = max(1, round(min(loaded.spatial_shape) / 250))
    refined = result.refined_probs is not None
    both = contours(
        image01,
        [coarse_mask, final_mask] if refined else [coarse_mask],
        [COARSE_COLOR, REFINED_COLOR] if refined else [COARSE_COLOR],
        thickness,
    )
    heat = uncertainty_heatmap(result.uncertainty, image01, vmax=1.0) if refined else None
    metrics = ""
    if gt is not None:
        rows = {"coarse": segmentation_metrics(coarse_mask, gt, loaded.spacing)}
        rows["refined" if refined else "final (post-processed)"] = segmentation_metrics(
            final_mask, gt, loaded.spacing
        )
        metrics = _metrics_table(rows)
    formats = [f.display for f in mask_formats(loaded.meta.get("format"))]  # + DICOM-SEG: DICOM in
    mask_format = mask_format if mask_format in formats else "PNG"
    mask_path, overlay_path = write_downloads(session, mask_format)
    timings = {**result.timings, "app total": time.perf_counter() - t_start}
    status = " ".join(notes) or (
        "Coarse (orange) and refined (blue) masks."
        if refined
        else "Coarse mask only (diffusion refinement off)."
    )
    presence = result.params.get("presence")
    if presence and presence["emptied"]:
        status += (" No object found: the preset's presence gate gives "
                   f"{presence['probability']:.2f} for one, below its threshold "
                   f"{presence['threshold']:.2f}, so the mask is left empty (the coarse model's "
                   "own mask is drawn in orange).")
    status += empty_rescue_note(result.params.get("empty_rescue"))
    for note in notes:
        gr.Warning(note)
    return (
        session,
        to_rgb(image01),
        overlay(image01, coarse_mask, COARSE_COLOR),
        overlay(image01, final_mask, REFINED_COLOR),
        both,
        heat,
        result.review_score,
        status,
        metrics,
        _timings_text(timings),
        gr.update(choices=formats, value=mask_format),
        gr.update(value=str(mask_path), interactive=True),
        gr.update(value=str(overlay_path), interactive=True),
    )


def clear_results():
    """Empty result pictures and texts, downloads off (the outputs of ``segment_image`` after
    the session and the preview)."""
    off = gr.update(value=None, interactive=False)
    return [None] * 5 + ["", "", ""] + [gr.update(), off, off]


@readable_errors
def change_mask_format(session: Session | None, mask_format: str):
    if session is None or session.last is None:
        return gr.update()
    return gr.update(value=str(write_downloads(session, mask_format)[0]))


def _metrics_table(rows: dict[str, dict[str, float]]) -> str:
    names = list(next(iter(rows.values())))
    lines = ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for label, values in rows.items():
        lines.append(f"| {label} | " + " | ".join(f"{values[n]:.3f}" for n in names) + " |")
    return "\n".join(lines)


def _timings_text(timings: dict[str, float]) -> str:
    return "Timings: " + " · ".join(f"{k} {v * 1000:.0f} ms" for k, v in timings.items())


# ---------------------------------------------------------------- batch
@readable_errors
def segment_batch(
    session: Session | None,
    files: list[str] | None,
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
    empty_rescue: bool = False,
    progress=gr.Progress(),  # noqa: B008 (how Gradio asks for a progress tracker)
):
    """Segment several files; a bad file is reported and skipped. Returns a zip of the masks
    (PNG for 2D, NIfTI for volumes, plus DICOM-SEG for DICOM inputs) and report.json."""
    if not files:
        raise InputError("no files in the batch; add one or more images")
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
    pipe, notes = build_pipeline(source, coarse_file, refiner_file, use_diffusion, refine, post,
                                 empty_rescue)
    folder = session.new_request()
    session.last = None
    masks = folder / "masks"
    masks.mkdir()
    paths = [Path(path) for path in files]
    jobs = [Job(p, s, name=p.name) for p, s in zip(paths, unique_stems(paths), strict=True)]

    def show(i: int, n: int, job: Job) -> None:
        progress((i, n), desc=f"segmenting {job.label}")

    batch = Batch(folder, quiet=True, echo=logger.warning, progress=show)
    head = {"app": "medrefine web interface", "notes": notes, "provenance": pipe.provenance()}
    report = batch.run(BatchMasks(pipe, masks), jobs, head)
    zip_path = folder / "medrefine_batch.zip"
    write_batch_zip(zip_path, report, masks)
    lines = [
        f"Segmented {report['n_ok']} of {report['n_inputs']} files."
        + "".join(f" {n}" for n in notes)
    ]
    lines += [
        f"- {r['input']}: failed: {r['error'].removeprefix(r['input'] + ': ')}"
        for r in report["files"]
        if r["status"] != "ok"
    ]
    return session, str(zip_path), "\n".join(lines)


class BatchMasks:
    """The batch tab's task: segment each upload, its masks into ``masks`` (PNG for 2D, NIfTI
    for volumes, plus DICOM-SEG for DICOM inputs); every request is a new folder, so nothing
    is ever done already."""

    name, unit = "segment", "file"
    columns, weights = SegmentTask.columns, SegmentTask.weights

    def __init__(self, pipe: SegmentationPipeline, masks: Path) -> None:
        self.pipe, self.masks = pipe, masks

    def outputs(self, job: Job) -> list[str]:
        return []

    def make(self, job: Job, echo) -> dict:
        t0 = time.perf_counter()
        result = self.pipe.run(read_image(job.source))
        return {
            "input": job.label,
            "status": "ok",
            "outputs": write_batch_masks(result, job.stem, self.masks),
            "shape": list(result.mask.shape),
            "foreground_fraction": float((result.mask > 0).mean()),
            "review_score": result.review_score,
            "timings": result.timings,
            "seconds": time.perf_counter() - t0,
        }


def empty_rescue_note(rescue: dict | None) -> str:
    """The status line's words for report.json's ``empty_rescue`` ("" where it did not run)."""
    if not rescue:
        return ""
    n, fraction = rescue["tiles"], rescue["tile_fraction"]
    tiles = f"{n} x {n} tiles of {fraction:g} of the frame"
    if rescue["found"]:
        return (" The whole frame gave an empty mask; this one comes from a second look over "
                f"{tiles}, for an object too small for the whole frame: check it.")
    if rescue["found"] is None:
        return (" The whole frame gave an empty mask; the image is too small to look again "
                "over tiles.")
    return (f" The whole frame gave an empty mask, and a second look over {tiles} found "
            "nothing either.")

