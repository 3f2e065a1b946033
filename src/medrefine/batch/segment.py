"""What a batch command writes: the output folder, each input's outputs in the requested
formats, JSON/CSV reports, and the one-line report of an input that failed."""

from __future__ import annotations

import csv
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from medrefine import __version__
from medrefine.commands.inputs import InputKind
from medrefine.errors import ConfigError, InputError, MedrefineError
from medrefine.io import OUTPUT_FORMATS, LoadedImage, atomic_output
from medrefine.io import write_json as write_json  # the commands' reports import it from here
from medrefine.pipeline import SegmentationResult, replace_range

logger = logging.getLogger(__name__)


def prepare_out_dir(path: Path) -> Path:
    """Create the output folder; refuse a path that is a file."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"-o {path}: is a file; give a folder for the outputs")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(
            f"-o {path}: cannot create the output folder ({err}); check the "
            "path and your permissions"
        ) from err
    return path


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


def write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> Path:
    """Write rows as CSV atomically (lists joined by ``;``, None as an empty cell)."""

    def cell(value: Any) -> Any:
        if value is None:
            return ""
        if isinstance(value, list | tuple):
            return ";".join(str(v) for v in value)
        return value

    with atomic_output(path) as tmp:
        with tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: cell(row.get(k)) for k in columns})
    return path


# ---------------------------------------------------------------- failures
def failure_reason(err: Exception) -> str:
    """One line for a failed input: a MedrefineError's message, else the exception type."""
    if isinstance(err, MedrefineError):
        text = str(err)
    else:
        logger.debug("unexpected error", exc_info=err)
        text = f"unexpected {type(err).__name__}: {err} (run with -vv for the traceback)"
    return " ".join(text.split())


def report_failure(name: str, reason: str, echo: Callable[[str], None] | None = None) -> None:
    """Print ``medrefine: skipped NAME: REASON`` on stderr (one line)."""
    if reason.startswith(f"{name}: "):  # the message already names the file
        reason = reason[len(name) + 2 :]
    line = f"medrefine: skipped {name}: {reason}"
    if echo is not None:
        echo(line)
    else:
        print(line, file=sys.stderr)


def echo_above_bar(line: str) -> None:
    """Print ``line`` on stderr without breaking a tqdm progress bar."""
    tqdm.write(line, file=sys.stderr)


# ---------------------------------------------------------------- report entries
def failure_record(
    path: Path, err: Exception, t0: float, echo: Callable[[str], None] | None, **extra: Any
) -> dict[str, Any]:
    """Report ``err`` for the input ``path`` (one line on stderr) and return its report entry;
    ``extra`` (e.g. the mask refined) follows ``input``."""
    reason = failure_reason(err)
    report_failure(str(path), reason, echo)
    return {
        "input": str(path),
        **extra,
        "status": "failed",
        "error": reason,
        "seconds": time.perf_counter() - t0,
    }


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
