"""The segmentation task of a batch: a ``SegmentationPipeline`` run on one input and its outputs
in the requested formats (the file names, which formats an input can hold, the writers), for
``medrefine segment``, the PACS pull and the DICOM listener alike."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from medrefine import __version__
from medrefine.batch.engine import Job
from medrefine.batch.inputs import InputKind, probe_kind
from medrefine.batch.records import failure_record
from medrefine.errors import ConfigError, InputError, MedrefineError
from medrefine.io import OUTPUT_FORMATS, LoadedImage, read_image
from medrefine.pipeline import SegmentationPipeline, SegmentationResult, replace_range

logger = logging.getLogger(__name__)


def display_image01(result: SegmentationResult) -> np.ndarray:
    """The input as (1|3, H, W) in [0, 1] for pictures."""
    image = result.image
    return replace_range(image.array, image.meta.get("source_dtype", "float32"))


def output_names(stem: str, formats: list[str], kind: InputKind) -> list[str]:
    """The files ``write_outputs`` writes for one input, in the order it writes them."""
    return [
        name
        for fmt in fitting_formats(formats, kind)
        for name in OUTPUT_FORMATS[fmt].file_names(stem, volume=kind.volume, nifti=kind.nifti)
    ]


def fitting_formats(formats: list[str], kind: InputKind) -> list[str]:
    """``formats`` less those the input cannot hold by its format (DICOM-SEG for an input that
    is not DICOM), when other formats remain: a mixed batch (DICOM beside NIfTI) asked for
    ``nifti,dicom-seg`` writes DICOM-SEG where it can and the other formats everywhere.
    DICOM-SEG alone is kept (``check_formats_fit`` then refuses the input with the reason)."""
    input_format = "dicom" if kind.dicom else "nifti" if kind.nifti else None
    kept = [f for f in formats if OUTPUT_FORMATS[f].fits(input_format)]
    return kept if kept else list(formats)


def skipped_formats(image: LoadedImage, formats: list[str]) -> dict[str, dict[str, str]]:
    """``{"skipped_formats": {format: why}}`` for an input's report entry, or ``{}``."""
    kept = fitting_formats(formats, InputKind.of(image))
    skipped = {
        f: OUTPUT_FORMATS[f].refusal(image.meta.get("format")) for f in formats if f not in kept
    }
    return {"skipped_formats": skipped} if skipped else {}


def check_formats_fit(image: LoadedImage, formats: list[str]) -> None:
    """Refuse an input that a requested format cannot hold (before segmenting it): a volume
    for the 2D pictures, anything but DICOM for DICOM-SEG when it is the only format asked."""
    pictures = [f for f in formats if OUTPUT_FORMATS[f].two_d_only]
    if image.is_volume and pictures:
        raise InputError(
            f"{image.path}: is a volume {image.spatial_shape}; the "
            f"{', '.join(pictures)} output(s) hold 2D images only; use "
            "--format nifti"
        )
    for fmt in fitting_formats(formats, InputKind.of(image)):
        advice = f"use --format nifti for this file (or drop {fmt})"
        OUTPUT_FORMATS[fmt].check_fits(image, label=f"--format {fmt}", advice=advice)


def write_outputs(
    result: SegmentationResult,
    out_dir: Path,
    stem: str,
    formats: list[str],
    extra: dict[str, Any] | None = None,
) -> list[Path]:
    """Write each requested format for one result (each file atomically); returns the paths
    written, which are ``output_names(stem, formats, InputKind.of(result.image))``.

    ``extra`` is added to the ``json`` summary (e.g. the weights' SHA-256)."""
    from medrefine.visualize import overlay, uncertainty_heatmap

    image = result.image
    check_formats_fit(image, formats)
    kind = InputKind.of(image)
    written = []
    for fmt in fitting_formats(formats, kind):
        spec = OUTPUT_FORMATS[fmt]
        names = spec.file_names(stem, volume=kind.volume, nifti=kind.nifti)
        if spec.holds_mask:  # the label names are the DICOM-SEG's segment labels
            labels = result.params.get("class_names")
            written.append(
                spec.write(result.mask, out_dir / names[0], like=image, label_names=labels)
            )
        elif fmt == "overlay":
            rgb = overlay(display_image01(result), result.mask > 0)
            written.append(spec.write(rgb, out_dir / names[0]))
        elif fmt == "uncertainty":
            if result.uncertainty is None:
                raise ConfigError("--format uncertainty needs refinement; drop --no-refine")
            for name in names:
                if name == f"{stem}{spec.suffix}":  # the heat map (2D inputs)
                    rgb = uncertainty_heatmap(result.uncertainty, display_image01(result), vmax=1.0)
                    written.append(spec.write(rgb, out_dir / name))
                else:  # the float map (volumes and NIfTI inputs)
                    written.append(spec.write_map(result.uncertainty, out_dir / name, like=image))
        elif fmt == "json":
            summary = {**image_summary(result), **(extra or {})}
            written.append(spec.write(summary, out_dir / names[0]))
    return written


def image_summary(result: SegmentationResult) -> dict[str, Any]:
    """Per-input facts for ``<stem>.json``: geometry, foreground size, score, timings, params.

    ``foreground_pixels`` counts mask pixels (voxels for volumes) > 0; with a known spacing
    ``foreground_area_mm2`` (2D) or ``foreground_volume_mm3`` (volumes) gives its size.
    """
    image, mask = result.image, result.mask
    spacing = [float(s) for s in image.spacing] if image.spacing is not None else None
    n_fg = int(np.count_nonzero(mask))
    cell = float(np.prod(spacing)) if spacing else None
    summary: dict[str, Any] = {
        "input": str(image.path) if image.path is not None else None,
        "format": image.meta.get("format"),
        "modality": image.meta.get("modality"),
        "shape": list(mask.shape),
        "spacing_mm": spacing,
        "foreground_pixels": n_fg,
        "foreground_fraction": n_fg / mask.size if mask.size else 0.0,
    }
    size_key = "foreground_volume_mm3" if mask.ndim == 3 else "foreground_area_mm2"
    summary[size_key] = n_fg * cell if cell is not None else None
    if int(mask.max(initial=0)) > 1:  # label map: pixels per label
        values, counts = np.unique(mask[mask > 0], return_counts=True)
        summary["label_pixels"] = {str(v): int(c) for v, c in zip(values, counts, strict=True)}
    summary["review_score"] = result.review_score
    summary["timings"] = result.timings
    summary["params"] = result.params
    summary["medrefine_version"] = __version__
    return summary


# ---------------------------------------------------------------- report entries
def result_record(
    path: Path,
    result: SegmentationResult,
    written: list[Path],
    t0: float,
    t_write: float,
    measures: dict[str, Any],
    **extra: Any,
) -> dict[str, Any]:
    """The report entry of an input segmented (or refined) from ``t0`` and written from
    ``t_write``; ``measures`` (e.g. the foreground fraction) follow its shape, ``extra``
    follows ``input``."""
    return {
        "input": str(path),
        **extra,
        "status": "ok",
        "outputs": [p.name for p in written],
        "shape": list(result.mask.shape),
        **measures,
        "review_score": result.review_score,
        "timings": {**result.timings, "write": time.perf_counter() - t_write},
        "seconds": time.perf_counter() - t0,
    }


# every kind an input can be, for the outputs of an input whose header cannot be read
_ANY_KIND = (
    InputKind(False),
    InputKind(False, nifti=True),
    InputKind(True, nifti=True),
    InputKind(False, dicom=True),
    InputKind(True, dicom=True),
)


def planned_names(path: Path, stem: str, formats: list[str]) -> list[str]:
    """The names ``write_outputs`` gives ``path``'s outputs (from its header; an unreadable
    header gives the names of every kind, to be safe)."""
    if "uncertainty" not in formats and "dicom-seg" not in formats:
        return output_names(stem, formats, InputKind(False))
    try:
        return output_names(stem, formats, probe_kind(path))
    except MedrefineError:
        names = (n for kind in _ANY_KIND for n in output_names(stem, formats, kind))
        return list(dict.fromkeys(names))


class SegmentTask:
    """Segment each job's input (``Job.source``: a file or a DICOM series folder) with ``pipe``
    and write its outputs into ``out_dir`` as ``<Job.stem>.*``."""

    name, unit = "segment", "input"
    columns = ["input", "status", "outputs", "seconds", "error", "rank"]
    weights = ("coarse", "refiner")

    def __init__(
        self,
        pipe: SegmentationPipeline,
        out_dir: Path,
        formats: list[str],
        file_extra: dict[str, Any] | None = None,
        *,
        allow_gaps: bool = False,
    ) -> None:
        self.pipe, self.out_dir, self.formats = pipe, out_dir, formats
        self.file_extra, self.allow_gaps = file_extra, allow_gaps

    def outputs(self, job: Job) -> list[str]:
        return planned_names(Path(job.source), job.stem, self.formats)

    def make(self, job: Job, echo) -> dict[str, Any]:
        return segment_one(
            self.pipe,
            Path(job.source),
            job.stem,
            self.out_dir,
            self.formats,
            echo,
            self.file_extra,
            allow_gaps=self.allow_gaps,
        )


def segment_one(
    pipe: SegmentationPipeline,
    path: Path,
    stem: str,
    out_dir: Path,
    formats: list[str],
    echo,
    file_extra: dict[str, Any] | None = None,
    *,
    allow_gaps: bool = False,
) -> dict[str, Any]:
    """Segment one input and write its outputs; a failure is reported, not raised.

    ``allow_gaps``: read a DICOM series with a missing slice on its regular grid (see
    ``read_image``); the record then lists the filled planes as ``filled_slices``."""
    t0 = time.perf_counter()
    try:
        loaded = read_image(path, allow_gaps=allow_gaps)
        check_formats_fit(loaded, formats)
        load_s = time.perf_counter() - t0
        result = pipe.run(loaded)
        result.timings["load"] = load_s  # pipe.run got the image already read
        result.timings["total"] = time.perf_counter() - t0
        t_write = time.perf_counter()
        written = write_outputs(result, out_dir, stem, formats, file_extra)
    except Exception as err:  # a batch goes on past a bad file (KeyboardInterrupt still stops)
        return failure_record(path, err, t0, echo)
    fraction = float((result.mask > 0).mean())
    measures: dict[str, Any] = {"foreground_fraction": fraction}
    if loaded.meta.get("filled_slices"):
        measures["filled_slices"] = loaded.meta["filled_slices"]
    if "presence" in result.params:  # the preset's gate: P(an object), and whether it emptied
        measures["presence"] = result.params["presence"]
    if "empty_rescue" in result.params:  # the whole frame's mask was empty: the tiles' look
        measures["empty_rescue"] = result.params["empty_rescue"]
    extra = skipped_formats(result.image, formats)  # DICOM-SEG asked of a non-DICOM input
    return result_record(path, result, written, t0, t_write, measures, **extra)


def warn_if_settings_changed(
    out_dir: Path, prov: dict[str, Any], formats: list[str], overwrite: bool
) -> None:
    """Resuming into a folder made with other weights or settings mixes two runs: say so."""
    previous = out_dir / "report.json"
    if overwrite or not previous.is_file():
        return
    try:
        old = json.loads(previous.read_text())
        old_prov = old["provenance"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    old_settings, settings = (
        _settings(old_prov),
        _settings(json.loads(json.dumps(prov, default=str))),
    )
    changed = [k for k in settings if old_settings.get(k) != settings[k]]
    if changed:
        logger.warning(
            "%s holds outputs made with other %s; they are kept (skipped). "
            "Pass --overwrite to redo them with the current settings",
            out_dir,
            ", ".join(changed),
        )


def _settings(prov: dict[str, Any]) -> dict[str, Any]:
    """What decides the masks: weights (by SHA-256, not path), refinement, post-processing."""
    weights = prov.get("weights") or {}
    return {
        "weights": {k: (v or {}).get("sha256") for k, v in weights.items()},
        "refinement": prov.get("refine"),
        "post-processing": prov.get("postprocess"),
    }
