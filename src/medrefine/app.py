"""The web interface (Gradio): upload an image, segment it, compare the coarse and the refined
mask, look at the uncertainty, download the mask.

    medrefine app                      # http://127.0.0.1:7860
    python app.py --port 8080          # the same, from the repository root

The callbacks are plain functions (``segment_image``, ``segment_batch``, ...) that call the
Python API only (``SegmentationPipeline``, ``read_image``, ``write_mask``, ``visualize``,
``metrics``), so they can be tested without a browser. Each browser session owns a ``Session``
(kept in a ``gr.State``): a temporary folder that holds everything the app writes for it and
is deleted when the session ends, and the session's last result. Nothing else is shared
between users but the loaded models, which inference only reads.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import shutil
import tempfile
import time
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from medrefine.checkpoint import file_sha256, read_info
from medrefine.errors import ConfigError, InputError, MedrefineError
from medrefine.io import LoadedImage, atomic_output, load_mask, read_image, stem_of, write_mask
from medrefine.metrics import segmentation_metrics
from medrefine.pipeline import SegmentationPipeline, SegmentationResult, replace_range
from medrefine.postprocess import PostprocessConfig
from medrefine.presets import PRESETS, get_preset, sample_path
from medrefine.refine import RefineParams
from medrefine.visualize import PALETTE, contours, overlay, save_png, uncertainty_heatmap

logger = logging.getLogger(__name__)

UPLOADED = "uploaded weights"
MASK_FORMATS = {
    "PNG": ("png", "_mask.png"),
    "NIfTI": ("nifti", "_mask.nii.gz"),
    "DICOM-SEG": ("dicom-seg", "_seg.dcm"),
}
COARSE_COLOR, REFINED_COLOR = PALETTE[0], PALETTE[1]  # orange, sky blue
MAX_FILE_SIZE = "200mb"
# System fonts only: the default theme would fetch web fonts, which offline hospitals lack.
FONTS = dict(
    font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
)


# ---------------------------------------------------------------- per-session state
class Session:
    """One browser session's temporary folder and its last result (lives in a ``gr.State``).

    Every request writes into a fresh sub-folder (the previous one is deleted first), so a
    session holds at most one request's files; ``close`` deletes the folder, and the
    ``TemporaryDirectory`` finalizer does so at exit if the session was never closed."""

    def __init__(self):
        self._tmp = tempfile.TemporaryDirectory(prefix="medrefine-app-")
        self.folder = Path(self._tmp.name)
        self.request: Path | None = None
        self.last: Outcome | None = None

    def new_request(self) -> Path:
        if self.request is not None:
            shutil.rmtree(self.request, ignore_errors=True)
        self.request = Path(tempfile.mkdtemp(prefix="request-", dir=self.folder))
        return self.request

    def close(self) -> None:
        self.last = None
        self._tmp.cleanup()


def close_session(session: Session | None) -> None:
    """``delete_callback`` of the session state: the browser left, remove its files."""
    if session is not None:
        session.close()


@dataclass
class Outcome:
    """The last single-image result of a session, kept to write other download formats."""

    result: SegmentationResult
    image01: np.ndarray  # (1|3, H, W) in [0, 1], for pictures
    stem: str


def readable_errors(fn):
    """Turn a ``MedrefineError`` into ``gr.Error`` (its message, no stack trace) and anything
    else into a short message; the traceback of unexpected errors goes to the server log."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except MedrefineError as err:
            raise gr.Error(_short_paths(str(err), args), print_exception=False) from None
        except Exception as err:
            logger.exception("unexpected error in %s", fn.__name__)
            raise gr.Error(
                f"unexpected {type(err).__name__}: {_first_line(err)} (details in the server log)",
                print_exception=False,
            ) from None

    return wrapper


def _first_line(err: Exception, limit: int = 200) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _short_paths(message: str, args: tuple) -> str:
    """Uploads live at long temporary paths; name them by their file name only."""
    for arg in args:
        if isinstance(arg, str) and arg.startswith(tempfile.gettempdir()):
            message = message.replace(arg, Path(arg).name)
    return message


# ---------------------------------------------------------------- models
def available_presets() -> list[str]:
    """Presets whose coarse weights are installed (a preset without them is not offered)."""
    return [name for name, preset in PRESETS.items() if preset.coarse_weights.is_file()]


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


@functools.lru_cache(maxsize=4)
def _cached_pipeline(
    preset: str | None, coarse: str | None, refiner: str | None, use_diffusion: bool, digest: str
) -> SegmentationPipeline:
    """Loaded models, shared read-only by all sessions (``digest``: uploaded files' content)."""
    return SegmentationPipeline(coarse, refiner, use_diffusion=use_diffusion, preset=preset)


def build_pipeline(
    source: str,
    coarse_file: str | None,
    refiner_file: str | None,
    use_diffusion: bool,
    refine: dict[str, Any],
    post: dict[str, Any],
) -> tuple[SegmentationPipeline, list[str]]:
    """A pipeline for one request (its own settings over shared models) and notes for the user.

    A missing refiner (preset not fully installed, or none uploaded) falls back to coarse only."""
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
        cached = _cached_pipeline(None, coarse_file, refiner, use_diffusion, digest)
    else:
        preset = get_preset(source)
        if use_diffusion and not preset.refiner_weights.is_file():
            notes.append(
                f"The {source} preset's diffusion refiner is not installed yet: "
                "showing the coarse mask only."
            )
            use_diffusion = False
        cached = _cached_pipeline(source, None, None, use_diffusion, "")
    pipe = copy.copy(cached)  # settings are per request; the models stay shared
    if pipe.refiner is not None:
        pipe.refine_params = replace(model_defaults(source, refiner_file)[0], **refine)
    base = PostprocessConfig() if source == UPLOADED else get_preset(source).postprocess
    pipe.post = postprocess_from(base, **post)
    return pipe, notes


def postprocess_from(
    base: PostprocessConfig,
    threshold: float,
    fill_holes: bool,
    keep_largest: bool,
    min_object_size: float | None,
) -> PostprocessConfig:
    """``base`` with the UI's switches (unchanged switches give ``base`` back exactly)."""
    changes: dict[str, Any] = {
        "threshold": float(threshold),
        "fill_holes": bool(fill_holes),
        "min_object_size": int(min_object_size or 0),
    }
    if not fill_holes:
        changes["max_hole_size"] = 0
    if keep_largest != (base.keep_largest or base.keep_top_k == 1):
        changes.update(keep_largest=bool(keep_largest), keep_top_k=0)
    return replace(base, **changes)


def _settings(steps, strength, samples, seed, threshold, fill_holes, keep_largest, min_size):
    if seed is None or steps is None or samples is None:
        raise ConfigError("steps, samples and seed must be numbers; fill in the empty field")
    refine = {
        "steps": int(steps),
        "strength": float(strength),
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


# ---------------------------------------------------------------- pictures
def display_image01(loaded: LoadedImage) -> np.ndarray:
    """(1|3, H, W) in [0, 1] (raw units rescaled as preprocessing does)."""
    return replace_range(loaded.array, loaded.meta.get("source_dtype", "float32"))


def to_rgb(image01: np.ndarray) -> np.ndarray:
    """(1|3, H, W) in [0, 1] -> uint8 (H, W, 3)."""
    rgb = np.repeat(image01, 3, axis=0) if image01.shape[0] == 1 else image01[:3]
    return np.rint(np.clip(np.moveaxis(rgb, 0, -1), 0, 1) * 255).astype(np.uint8)


def _read(image_file: str | None, slice_index: float | None) -> LoadedImage:
    if not image_file:
        raise InputError("no image uploaded; upload an image or pick an example")
    loaded = read_image(image_file)
    if loaded.is_volume:  # one slice of a volume, chosen with the slider
        loaded = read_image(image_file, slice=int(slice_index or 0))
    return loaded


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
    return to_rgb(display_image01(_read(image_file, slice_index))) if image_file else None


# ---------------------------------------------------------------- one image
def _ground_truth(gt_file: str, loaded: LoadedImage) -> np.ndarray:
    gt = load_mask(gt_file).mask
    if "slice" in loaded.meta and gt.shape == tuple(loaded.meta["volume_shape"]):
        gt = gt[loaded.meta["slice"]]
    if gt.shape != loaded.spatial_shape:
        raise InputError(
            f"the ground-truth mask is {gt.shape} but the image is "
            f"{loaded.spatial_shape}; upload the mask of this image"
        )
    return gt > 0


def _metrics_table(rows: dict[str, dict[str, float]]) -> str:
    names = list(next(iter(rows.values())))
    lines = ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for label, values in rows.items():
        lines.append(f"| {label} | " + " | ".join(f"{values[n]:.3f}" for n in names) + " |")
    return "\n".join(lines)


def _timings_text(timings: dict[str, float]) -> str:
    return "Timings: " + " · ".join(f"{k} {v * 1000:.0f} ms" for k, v in timings.items())


def write_downloads(session: Session, mask_format: str) -> tuple[Path, Path]:
    """The last result's mask in ``mask_format`` and its overlay, in the request folder."""
    outcome = session.last
    if outcome is None or session.request is None:
        raise InputError("nothing to download yet; segment an image first")
    fmt, suffix = MASK_FORMATS.get(mask_format, MASK_FORMATS["PNG"])
    result = outcome.result
    if fmt == "dicom-seg" and result.image.meta.get("format") != "dicom":
        raise InputError("DICOM-SEG needs a DICOM input; download the mask as PNG or NIfTI")
    mask_path = write_mask(
        result.mask, session.request / f"{outcome.stem}{suffix}", like=result.image, format=fmt
    )
    picture = overlay(outcome.image01, result.mask > 0, color=REFINED_COLOR)
    overlay_path = save_png(picture, session.request / f"{outcome.stem}_overlay.png")
    return mask_path, overlay_path


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
    samples: float,
    seed: float,
    threshold: float,
    fill_holes: bool,
    keep_largest: bool,
    min_object_size: float | None,
    progress=gr.Progress(),  # noqa: B008 (how Gradio asks for a progress tracker)
):
    """Segment one image (or a volume's slice) and fill every output of the single tab."""
    t_start = time.perf_counter()
    session = session or Session()
    refine, post = _settings(
        steps, strength, samples, seed, threshold, fill_holes, keep_largest, min_object_size
    )
    progress(0.05, desc="reading the image")
    loaded = _read(image_file, slice_index)
    gt = _ground_truth(gt_file, loaded) if gt_file else None
    progress(0.15, desc="loading the model")
    pipe, notes = build_pipeline(source, coarse_file, refiner_file, use_diffusion, refine, post)
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
    formats = ["PNG", "NIfTI"] + (["DICOM-SEG"] if loaded.meta.get("format") == "dicom" else [])
    mask_format = mask_format if mask_format in formats else "PNG"
    mask_path, overlay_path = write_downloads(session, mask_format)
    timings = {**result.timings, "app total": time.perf_counter() - t_start}
    status = " ".join(notes) or (
        "Coarse (orange) and refined (blue) masks."
        if refined
        else "Coarse mask only (diffusion refinement off)."
    )
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
    samples: float,
    seed: float,
    threshold: float,
    fill_holes: bool,
    keep_largest: bool,
    min_object_size: float | None,
    progress=gr.Progress(),  # noqa: B008 (how Gradio asks for a progress tracker)
):
    """Segment several files; a bad file is reported and skipped. Returns a zip of the masks
    (PNG for 2D, NIfTI for volumes, plus DICOM-SEG for DICOM inputs) and report.json."""
    if not files:
        raise InputError("no files in the batch; add one or more images")
    t_start = time.perf_counter()
    session = session or Session()
    refine, post = _settings(
        steps, strength, samples, seed, threshold, fill_holes, keep_largest, min_object_size
    )
    pipe, notes = build_pipeline(source, coarse_file, refiner_file, use_diffusion, refine, post)
    folder = session.new_request()
    session.last = None
    masks = folder / "masks"
    masks.mkdir()
    records, seen = [], {}
    for i, path in enumerate(files):
        progress((i, len(files)), desc=f"segmenting {Path(path).name}")
        stem = stem_of(Path(path))
        seen[stem] = seen.get(stem, 0) + 1
        stem += f"_{seen[stem]}" if seen[stem] > 1 else ""
        records.append(_segment_one(pipe, Path(path), stem, masks))
    n_failed = sum(r["status"] != "ok" for r in records)
    report = {
        "app": "medrefine web interface",
        "seconds": time.perf_counter() - t_start,
        "n_inputs": len(records),
        "n_ok": len(records) - n_failed,
        "n_failed": n_failed,
        "notes": notes,
        "provenance": pipe.provenance(),
        "files": records,
    }
    zip_path = folder / "medrefine_batch.zip"
    with atomic_output(zip_path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("report.json", json.dumps(report, indent=2, default=str) + "\n")
        for mask in sorted(masks.iterdir()):
            zf.write(mask, f"masks/{mask.name}")
    lines = [
        f"Segmented {len(records) - n_failed} of {len(records)} files."
        + "".join(f" {n}" for n in notes)
    ]
    lines += [f"- {r['input']}: failed: {r['error']}" for r in records if r["status"] != "ok"]
    return session, str(zip_path), "\n".join(lines)


def _segment_one(pipe: SegmentationPipeline, path: Path, stem: str, out: Path) -> dict:
    """One batch file -> masks in ``out`` (PNG for 2D, NIfTI for volumes, plus DICOM-SEG for
    DICOM inputs) and its report entry; a failure is recorded, not raised."""
    t0 = time.perf_counter()
    try:
        result = pipe.run(read_image(path))
        names = {
            "nifti" if result.image.is_volume else "png": stem
            + (".nii.gz" if result.image.is_volume else ".png")
        }
        if result.image.meta.get("format") == "dicom":
            names["dicom-seg"] = f"{stem}_seg.dcm"
        outputs = [
            write_mask(result.mask, out / name, like=result.image, format=fmt).name
            for fmt, name in names.items()
        ]
    except Exception as err:  # a batch goes on past a bad file
        if isinstance(err, MedrefineError):
            message = str(err).replace(str(path), path.name).removeprefix(f"{path.name}: ")
        else:
            logger.exception("unexpected error on %s", path)
            message = f"unexpected {type(err).__name__}: {_first_line(err)}"
        return {
            "input": path.name,
            "status": "failed",
            "error": message,
            "seconds": time.perf_counter() - t0,
        }
    return {
        "input": path.name,
        "status": "ok",
        "outputs": outputs,
        "shape": list(result.mask.shape),
        "foreground_fraction": float((result.mask > 0).mean()),
        "review_score": result.review_score,
        "timings": result.timings,
        "seconds": time.perf_counter() - t0,
    }


# ---------------------------------------------------------------- settings that follow the model
def _setting_updates(params: RefineParams, post: PostprocessConfig) -> list[dict]:
    return [
        gr.update(value=params.steps),
        gr.update(value=params.strength),
        gr.update(value=params.samples),
        gr.update(value=params.seed),
        gr.update(value=post.threshold),
        gr.update(value=post.fill_holes),
        gr.update(value=post.keep_largest or post.keep_top_k == 1),
        gr.update(value=post.min_object_size),
    ]


@readable_errors
def change_source(source: str, refiner_file: str | None):
    """A new model source: show/hide the weights uploads, reset settings to its defaults."""
    params, post = model_defaults(source, refiner_file)
    return [
        gr.update(visible=source == UPLOADED),
        model_note(source),
        *_setting_updates(params, post),
    ]


@readable_errors
def change_refiner_upload(source: str, refiner_file: str | None):
    """An uploaded refiner brings its tuned refinement settings."""
    if source != UPLOADED or not refiner_file:
        return [gr.update()] * 4
    return _setting_updates(*model_defaults(source, refiner_file))[:4]


# ---------------------------------------------------------------- layout
def build_app(idle_s: float = 4 * 3600) -> gr.Blocks:
    """The interface; ``launch`` serves it. ``idle_s``: a session's files are deleted after
    this long without a request."""
    presets = available_presets()
    sources = [*presets, UPLOADED]
    source0 = "polyp" if "polyp" in presets else sources[0]
    params0, post0 = model_defaults(source0)
    with gr.Blocks(title="medrefine", analytics_enabled=False, delete_cache=(1800, 3600)) as demo:
        # Gradio drops a session's state an hour after its tab closes (or after idle_s idle).
        session = gr.State(None, time_to_live=idle_s, delete_callback=close_session)
        gr.Markdown(
            "# medrefine\nA coarse segmentation refined by diffusion, with a per-pixel "
            "uncertainty. Research software: not for diagnosis."
        )
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                source = gr.Radio(sources, value=source0, label="Model", elem_id="source")
                with gr.Group(visible=source0 == UPLOADED) as weights_box:
                    coarse_file = gr.File(
                        label="Coarse model (.safetensors)",
                        file_types=[".safetensors"],
                        height=150,
                        elem_id="coarse-weights",
                    )
                    refiner_file = gr.File(
                        label="Diffusion refiner (.safetensors, optional)",
                        file_types=[".safetensors"],
                        height=150,
                        elem_id="refiner-weights",
                    )
                note = gr.Markdown(
                    model_note(source0)
                    if presets
                    else "No preset weights are installed; upload your own."
                )
                use_diffusion = gr.Checkbox(True, label="Diffusion refinement")
                with gr.Accordion("Refinement", open=True):
                    steps = gr.Slider(1, 100, params0.steps, step=1, label="Steps", elem_id="steps")
                    strength = gr.Slider(
                        0.01,
                        1.0,
                        params0.strength,
                        step=0.01,
                        label="Strength",
                        info="share of the noise schedule "
                        "re-run; higher trusts the coarse mask less",
                    )
                    samples = gr.Slider(
                        1,
                        32,
                        params0.samples,
                        step=1,
                        label="Samples",
                        info="> 1 adds the samples' spread to the uncertainty",
                    )
                    seed = gr.Number(params0.seed, precision=0, label="Seed")
                with gr.Accordion("Post-processing", open=False):
                    threshold = gr.Slider(0.05, 0.95, post0.threshold, step=0.05, label="Threshold")
                    fill_holes = gr.Checkbox(post0.fill_holes, label="Fill holes")
                    keep_largest = gr.Checkbox(
                        post0.keep_largest or post0.keep_top_k == 1,
                        label="Keep the largest object only",
                    )
                    min_size = gr.Number(
                        post0.min_object_size,
                        precision=0,
                        minimum=0,
                        label="Minimum object size (pixels)",
                    )
            with gr.Column(scale=3):
                with gr.Tabs():
                    with gr.Tab("Single image"):
                        with gr.Row():
                            with gr.Column():
                                image_file = gr.File(
                                    label="Image: PNG, JPEG, TIFF, BMP, DICOM or NIfTI",
                                    elem_id="image-file",
                                )
                                gt_file = gr.File(
                                    label="Ground-truth mask (optional)", elem_id="gt-file"
                                )
                                slice_index = gr.Slider(
                                    0, 1, 0, step=1, label="Slice", visible=False, elem_id="slice"
                                )
                                run = gr.Button("Segment", variant="primary", elem_id="run")
                            preview = _picture("Image", "preview")
                        _examples(presets, image_file, gt_file, source)
                        status = gr.Markdown(elem_id="status")
                        with gr.Row():
                            coarse_img = _picture("Coarse mask", "coarse")
                            refined_img = _picture("Refined mask (final)", "refined")
                        with gr.Row():
                            contour_img = _picture(
                                "Contours: coarse (orange) vs refined (blue)", "contours"
                            )
                            uncert_img = _picture("Uncertainty", "uncertainty")
                        with gr.Row():
                            review = gr.Number(
                                label="Review score (high: worth a human look)",
                                precision=3,
                                interactive=False,
                                elem_id="review",
                            )
                            mask_format = gr.Radio(
                                ["PNG", "NIfTI"],
                                value="PNG",
                                label="Mask format",
                                elem_id="mask-format",
                            )
                        with gr.Row():
                            mask_dl = gr.DownloadButton(
                                "Download mask", interactive=False, elem_id="download-mask"
                            )
                            overlay_dl = gr.DownloadButton(
                                "Download overlay", interactive=False, elem_id="download-overlay"
                            )
                        metrics = gr.Markdown(elem_id="metrics")
                        timings = gr.Markdown(elem_id="timings")
                    with gr.Tab("Batch"):
                        batch_files = gr.File(
                            file_count="multiple", label="Images", elem_id="batch-files"
                        )
                        batch_run = gr.Button("Segment all", variant="primary", elem_id="batch-run")
                        batch_zip = gr.File(
                            label="Masks and report.json (zip)", elem_id="batch-zip"
                        )
                        batch_summary = gr.Markdown(elem_id="batch-summary")

        settings = [source, coarse_file, refiner_file, use_diffusion, steps, strength, samples,
                    seed, threshold, fill_holes, keep_largest, min_size]  # fmt: skip
        followers = [steps, strength, samples, seed, threshold, fill_holes, keep_largest, min_size]
        source.change(change_source, [source, refiner_file], [weights_box, note, *followers])
        refiner_file.change(change_refiner_upload, [source, refiner_file], followers[:4])
        results = [session, preview, coarse_img, refined_img, contour_img, uncert_img, review,
                   status, metrics, timings, mask_format, mask_dl, overlay_dl]  # fmt: skip
        image_file.change(preview_image, [image_file], [preview, slice_index])
        # A new image clears the last one's results, so they are never shown side by side.
        image_file.change(clear_results, None, results[2:])
        slice_index.release(preview_slice, [image_file, slice_index], [preview])
        run.click(
            segment_image,
            [session, image_file, gt_file, slice_index, mask_format, *settings],
            results,
        )
        mask_format.input(change_mask_format, [session, mask_format], [mask_dl])
        batch_run.click(
            segment_batch, [session, batch_files, *settings], [session, batch_zip, batch_summary]
        )
    return demo


def _picture(label: str, elem_id: str) -> gr.Image:
    return gr.Image(label=label, format="png", interactive=False, elem_id=elem_id)


def _examples(presets: list[str], image_file, gt_file, source) -> None:
    """One bundled example per preset (all samples, without the model switch, when no preset
    is installed)."""
    names = presets or list(PRESETS)
    rows = []
    for name in names:
        image = sample_path(name)
        row = [str(image), str(image.with_name(f"{image.stem}_mask.png"))]
        rows.append(row + [name] if presets else row)
    gr.Examples(
        rows,
        [image_file, gt_file, source] if presets else [image_file, gt_file],
        label="Examples (image and ground truth)",
        example_labels=names,
    )


def launch(
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    max_file_size: str | int = MAX_FILE_SIZE,
    **kwargs: Any,
) -> gr.Blocks:
    """Build and serve the app; blocks until stopped unless ``prevent_thread_lock=True`` is
    passed (then the caller stops it with ``.close()`` on the returned Blocks)."""
    demo = build_app()
    demo.queue(default_concurrency_limit=1)  # one segmentation at a time on a CPU server
    demo.launch(
        server_name=host,
        server_port=port,
        share=share,
        max_file_size=max_file_size,
        ssr_mode=False,
        show_error=False,
        theme=gr.themes.Default(**FONTS),
        allowed_paths=[str(sample_path(next(iter(PRESETS))).parent)],
        **kwargs,
    )
    return demo
