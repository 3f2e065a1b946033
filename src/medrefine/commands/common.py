"""Options and helpers shared by ``segment``, ``refine`` and ``evaluate``.

Model choice (``--preset`` or ``--weights``), refinement settings, post-processing switches and
the output formats are declared once here, so the three commands spell them the same way and
build their ``SegmentationPipeline`` by the same rules.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import logging
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from medrefine import __version__
from medrefine.errors import ConfigError, InputError, MedrefineError
from medrefine.fusion import FUSIONS
from medrefine.io import (
    LoadedImage,
    atomic_output,
    sniff_format,
    stem_of,
    write_float_nifti,
    write_image_png,
    write_mask,
)
from medrefine.io.base import full_suffix
from medrefine.io.sniff import SUFFIX_FORMATS
from medrefine.pipeline import SegmentationPipeline, SegmentationResult, replace_range
from medrefine.postprocess import PostprocessConfig
from medrefine.presets import PRESETS, get_preset

logger = logging.getLogger(__name__)

DEFAULT_PRESET = "polyp"


# ---------------------------------------------------------------- options
def add_model_options(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    """``--preset`` | ``--weights`` (+ ``--refiner-weights``), ``--no-refine``, ``--backend``,
    ``--device``."""
    group = parser.add_mutually_exclusive_group(required=required)
    default = "" if required else f" (default {DEFAULT_PRESET} without --weights)"
    group.add_argument("--preset", choices=sorted(PRESETS), help="shipped model set" + default)
    group.add_argument(
        "--weights",
        type=Path,
        metavar="COARSE.safetensors",
        help="coarse model weights; post-processing then defaults to a plain "
        "0.5 threshold (add the switches below)",
    )
    parser.add_argument(
        "--refiner-weights",
        type=Path,
        metavar="R.safetensors",
        help="diffusion refiner weights (needed with --weights unless "
        "--no-refine; with --preset it replaces the preset's refiner)",
    )
    parser.add_argument(
        "--no-refine", action="store_true", help="coarse model only, no diffusion refinement"
    )
    parser.add_argument(
        "--backend",
        choices=["torch", "onnx", "onnx-int8"],
        default="torch",
        help="what runs the models: torch (default), onnx (ONNX Runtime on the CPU; the graphs "
        "are exported to ~/.cache/medrefine/onnx on first use) or onnx-int8 (its int8 graphs, "
        "faster, slightly different masks)",
    )
    add_device_option(parser)


def add_device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="where the models run (default auto: cuda when available)",
    )


def add_refine_options(parser: argparse.ArgumentParser) -> None:
    """Refinement settings; unset ones keep the refiner's own validated defaults."""
    g = parser.add_argument_group("refinement (default: the refiner's tuned settings)")
    g.add_argument("--steps", type=int, help="denoising steps")
    g.add_argument(
        "--strength",
        type=float,
        help="share of the noise schedule to re-run, in (0, 1]; higher trusts the coarse mask less",
    )
    g.add_argument(
        "--samples", type=int, help="samples per image (> 1 adds sample spread to the uncertainty)"
    )
    g.add_argument("--seed", type=int, help="noise seed (same seed, same mask)")
    g.add_argument("--fusion", choices=FUSIONS, help="how samples are combined")


def add_postprocess_options(parser: argparse.ArgumentParser) -> None:
    """Switches over the preset's post-processing (unset ones keep the preset's value)."""
    g = parser.add_argument_group("post-processing (default: the preset's)")
    g.add_argument("--threshold", type=float, help="foreground probability threshold")
    g.add_argument(
        "--fill-holes",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="fill enclosed holes",
    )
    g.add_argument(
        "--keep-largest",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep only the largest connected component",
    )
    g.add_argument(
        "--min-object-size", type=int, metavar="PIXELS", help="remove components smaller than this"
    )
    g.add_argument("--opening", type=int, metavar="RADIUS", help="binary opening radius")
    g.add_argument("--closing", type=int, metavar="RADIUS", help="binary closing radius")
    g.add_argument("--smooth", type=float, metavar="SIGMA", help="boundary smoothing sigma")


# Output formats: name -> what it writes (``output_names`` and ``write_outputs`` follow it).
FORMATS = {
    "png": "<stem>.png: the mask, 0/255, at the input size (2D inputs)",
    "nifti": "<stem>.nii.gz: the mask as uint8 labels with the input's geometry "
    "(2D inputs give a 2D NIfTI)",
    "dicom-seg": "<stem>.dcm: a DICOM-SEG referencing the source instances (DICOM inputs)",
    "overlay": "<stem>_overlay.png: the mask tinted over the image (2D inputs)",
    "uncertainty": "<stem>_uncertainty.png: the refiner's uncertainty heat map (2D inputs), "
    "and <stem>_uncertainty.nii.gz: the uncertainty as float32 (volumes and NIfTI inputs)",
    "json": "<stem>.json: shape, spacing, foreground pixels and area (mm2) or volume (mm3), "
    "review score, timings and parameters",
}


def add_format_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format",
        default="png",
        metavar="LIST",
        help="comma-separated outputs per input: "
        + "; ".join(f"{k} = {v}" for k, v in FORMATS.items())
        + " (default png)",
    )


def parse_formats(text: str, refining: bool) -> list[str]:
    formats = [f.strip().lower() for f in text.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ConfigError(
            f"--format {text!r}: unknown format(s) {unknown}; choose a "
            f"comma-separated list from {sorted(FORMATS)}"
        )
    if "uncertainty" in formats and not refining:
        raise ConfigError(
            "--format uncertainty needs refinement; drop --no-refine or the uncertainty format"
        )
    return list(dict.fromkeys(formats))


# ---------------------------------------------------------------- building the pipeline
def postprocess_config(args: argparse.Namespace, base: PostprocessConfig) -> PostprocessConfig:
    """``base`` with the command-line switches applied."""
    changes: dict[str, Any] = {}
    if args.threshold is not None:
        changes["threshold"] = args.threshold
    if args.fill_holes is not None:
        changes["fill_holes"] = args.fill_holes
        if not args.fill_holes:
            changes["max_hole_size"] = 0
    if args.keep_largest is not None:
        changes["keep_largest"] = args.keep_largest
        if args.keep_largest:
            changes["keep_top_k"] = 0  # keep_largest replaces a preset's top-k
    for flag, key in (
        ("min_object_size", "min_object_size"),
        ("opening", "opening_radius"),
        ("closing", "closing_radius"),
        ("smooth", "smooth_sigma"),
    ):
        if getattr(args, flag) is not None:
            changes[key] = getattr(args, flag)
    return replace(base, **changes)


def refine_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        k: getattr(args, k)
        for k in ("steps", "strength", "samples", "seed", "fusion")
        if getattr(args, k, None) is not None
    }


def build_pipeline(args: argparse.Namespace) -> SegmentationPipeline:
    """The pipeline that ``--preset``/``--weights``/``--refiner-weights``/``--no-refine`` and
    the refinement and post-processing switches describe."""
    use_diffusion = not args.no_refine
    if args.weights is not None and use_diffusion and args.refiner_weights is None:
        raise ConfigError(
            "--weights gives only the coarse model; pass --refiner-weights "
            "R.safetensors as well, or --no-refine for coarse masks only"
        )
    preset = args.preset or (DEFAULT_PRESET if args.weights is None else None)
    base_post = get_preset(preset).postprocess if preset else PostprocessConfig()
    backend = getattr(args, "backend", "torch")
    pipe = SegmentationPipeline(
        cpunet_weights=args.weights,
        diffusion_weights=args.refiner_weights,
        device=args.device,
        use_diffusion=use_diffusion,
        preset=preset,
        postprocess=postprocess_config(args, base_post),
        backend="onnx" if backend.startswith("onnx") else "torch",
        quantized=backend == "onnx-int8",
    )
    overrides = refine_overrides(args)
    if overrides and pipe.refiner is None:
        logger.warning("--%s ignored: refinement is off (--no-refine)", next(iter(overrides)))
    elif overrides:
        pipe.refine_params = replace(pipe.refine_params, **overrides)
    return pipe


def provenance(pipe: SegmentationPipeline, args: argparse.Namespace) -> dict[str, Any]:
    """``pipe.provenance()`` (kept as a hook for command-specific additions)."""
    prov = pipe.provenance()
    prov["seed"] = prov["refine"]["seed"] if prov.get("refine") else None
    prov["python_version"] = platform.python_version()
    prov["torch_version"] = _torch_version()
    prov["arguments"] = {k: v for k, v in sorted(vars(args).items()) if k != "func"}
    return prov


def _torch_version() -> str:
    import torch

    return str(torch.__version__)


# ---------------------------------------------------------------- inputs
def expand_inputs(specs: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files, folders (their supported images, not recursive; a folder holding one DICOM
    series is one input) and glob patterns -> (inputs in order, [(spec, why it gave none)])."""
    inputs: list[Path] = []
    problems: list[tuple[str, str]] = []
    for spec in specs:
        path = Path(spec)
        if path.exists():
            candidates, from_pattern = [path], False
        elif glob.has_magic(spec):
            candidates, from_pattern = [Path(p) for p in sorted(glob.glob(spec))], True
            if not candidates:
                problems.append((spec, "no file matches this pattern"))
        else:
            problems.append((spec, "no such file or folder; check the path"))
            continue
        for cand in candidates:
            if cand.is_dir():
                found = folder_inputs(cand)
                if not found and not from_pattern:
                    problems.append(
                        (
                            spec,
                            "folder holds no supported images (PNG, JPEG, TIFF, BMP, DICOM, NIfTI)",
                        )
                    )
                inputs.extend(found)
            elif not from_pattern or _looks_supported(cand):
                inputs.append(cand)
    first: dict[Path, Path] = {}
    for path in inputs:  # the same file named twice is segmented once
        first.setdefault(path.resolve(), path)
    return list(first.values()), problems


def folder_inputs(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if SUFFIX_FORMATS.get(full_suffix(p)) not in (None, "dicom")]
    dicoms = [p for p in files if _is_dicom(p)]
    if images or len(dicoms) <= 1:
        return images + dicoms
    if len(_series_uids(dicoms)) == 1:
        return [folder]  # one series: one volume
    logger.info("%s: holds several DICOM series; segmenting each file on its own", folder)
    return dicoms


def _looks_supported(path: Path) -> bool:
    return SUFFIX_FORMATS.get(full_suffix(path)) is not None or _is_dicom(path)


def _is_dicom(path: Path) -> bool:
    if SUFFIX_FORMATS.get(full_suffix(path)) == "dicom":
        return True
    if full_suffix(path):  # other suffixes (.json, .txt, images) are not DICOM candidates
        return False
    try:
        return sniff_format(path) == "dicom"
    except InputError:
        return False


def _series_uids(paths: list[Path]) -> set[str]:
    from medrefine.io.dicom import open_dicom

    uids = set()
    for path in paths:
        try:
            uids.add(str(open_dicom(path, stop_before_pixels=True).get("SeriesInstanceUID")))
        except InputError:
            uids.add(f"unreadable:{path}")  # reported when the file itself is read
    return uids


def unique_stems(paths: list[Path]) -> list[str]:
    """Output stems; a repeated stem gets ``_2``, ``_3``... so no output overwrites another
    (``report`` counts as taken: the run report is ``report.json``)."""
    seen: dict[str, int] = {"report": 1}
    stems = []
    for path in paths:
        stem = stem_of(path)
        seen[stem] = seen.get(stem, 0) + 1
        if seen[stem] > 1:
            logger.warning(
                "%s: another input has the stem %r; writing it as %s_%d",
                path,
                stem,
                stem,
                seen[stem],
            )
            stem = f"{stem}_{seen[stem]}"
        stems.append(stem)
    return stems


# ---------------------------------------------------------------- outputs
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


@dataclass(frozen=True)
class InputKind:
    """What decides which files an input's outputs are: volume or 2D, NIfTI, DICOM."""

    volume: bool
    nifti: bool = False
    dicom: bool = False

    @classmethod
    def of(cls, image: LoadedImage) -> InputKind:
        fmt = image.meta.get("format")
        return cls(image.is_volume, fmt == "nifti", fmt == "dicom")


def probe_kind(path: Path) -> InputKind:
    """An input's kind from its header alone (no pixel data), for resume checks.

    Raises:
        InputError: the file cannot be read; the caller then segments it (and reports it).
    """
    fmt = sniff_format(path)
    if fmt == "dicom-folder":
        return InputKind(True, dicom=True)
    if fmt == "dicom":
        from medrefine.io.dicom import open_dicom

        ds = open_dicom(path, stop_before_pixels=True)
        return InputKind(int(ds.get("NumberOfFrames", 1) or 1) > 1, dicom=True)
    if fmt == "nifti":
        import nibabel as nib

        try:
            shape = nib.load(path).shape
        except Exception as err:  # nibabel raises many types for damaged headers
            raise InputError(f"{path}: cannot read the NIfTI header ({err})") from err
        return InputKind(len(shape) >= 3 and shape[2] > 1, nifti=True)
    if fmt == "tiff":
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                return InputKind(len(tif.pages) > 1)
        except Exception as err:
            raise InputError(f"{path}: cannot read the TIFF header ({err})") from err
    return InputKind(False)


def output_names(stem: str, formats: list[str], kind: InputKind) -> list[str]:
    """The files ``write_outputs`` writes for one input, in the order it writes them."""
    names = []
    for fmt in formats:
        if fmt == "png":
            names.append(f"{stem}.png")
        elif fmt == "nifti":
            names.append(f"{stem}.nii.gz")
        elif fmt == "dicom-seg":
            names.append(f"{stem}.dcm")
        elif fmt == "overlay":
            names.append(f"{stem}_overlay.png")
        elif fmt == "uncertainty":
            if not kind.volume:
                names.append(f"{stem}_uncertainty.png")
            if kind.volume or kind.nifti:
                names.append(f"{stem}_uncertainty.nii.gz")
        elif fmt == "json":
            names.append(f"{stem}.json")
    return names


def check_formats_fit(image: LoadedImage, formats: list[str]) -> None:
    """Refuse an input that a requested format cannot hold (before segmenting it): a volume
    for the 2D pictures, anything but DICOM for DICOM-SEG."""
    pictures = [f for f in formats if f in ("png", "overlay")]
    if image.is_volume and pictures:
        raise InputError(
            f"{image.path}: is a volume {image.spatial_shape}; the "
            f"{', '.join(pictures)} output(s) hold 2D images only; use "
            "--format nifti"
        )
    fmt = image.meta.get("format")
    if "dicom-seg" in formats and fmt != "dicom":
        raise InputError(
            f"{image.path}: --format dicom-seg needs a DICOM input to reference, got "
            f"{fmt!r}; use --format nifti for this file (or drop dicom-seg)"
        )


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
    for fmt in formats:
        if fmt == "png":
            written.append(write_mask(result.mask, out_dir / f"{stem}.png", like=image))
        elif fmt == "nifti":
            path = out_dir / f"{stem}.nii.gz"
            written.append(write_mask(result.mask, path, like=image, format="nifti"))
        elif fmt == "dicom-seg":
            path = out_dir / f"{stem}.dcm"
            written.append(write_mask(result.mask, path, like=image, format="dicom-seg"))
        elif fmt == "overlay":
            rgb = overlay(display_image01(result), result.mask > 0)
            written.append(write_image_png(rgb, out_dir / f"{stem}_overlay.png"))
        elif fmt == "uncertainty":
            if result.uncertainty is None:
                raise ConfigError("--format uncertainty needs refinement; drop --no-refine")
            if not kind.volume:
                rgb = uncertainty_heatmap(result.uncertainty, display_image01(result), vmax=1.0)
                written.append(write_image_png(rgb, out_dir / f"{stem}_uncertainty.png"))
            if kind.volume or kind.nifti:
                path = out_dir / f"{stem}_uncertainty.nii.gz"
                written.append(write_float_nifti(result.uncertainty, path, like=image))
        elif fmt == "json":
            summary = {**image_summary(result), **(extra or {})}
            written.append(write_json(out_dir / f"{stem}.json", summary))
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


def write_json(path: Path, data: Any) -> Path:
    """Write JSON atomically (NaN becomes null so other tools can read it)."""
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(_json_safe(data), indent=2) + "\n")
    return path


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


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


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
