"""Command-line options shared by ``segment``, ``refine`` and ``evaluate``, and the pipeline
they describe.

Model choice (``--preset`` or ``--weights``), refinement settings, post-processing switches and
the output formats are declared once here, so the three commands spell them the same way and
build their ``SegmentationPipeline`` by the same rules.
"""

from __future__ import annotations

import argparse
import logging
import platform
from pathlib import Path
from typing import Any

from medrefine.batch.report import run_head, weights_extra
from medrefine.errors import ConfigError
from medrefine.fusion import FUSIONS
from medrefine.inference import parse_tta
from medrefine.io.formats import OUTPUT_FORMATS, formats_help
from medrefine.pipeline import SegmentationPipeline
from medrefine.postprocess import PostprocessConfig
from medrefine.presets import DEFAULT_PRESET, PRESETS, get_preset

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------- options
def add_out_option(parser: argparse.ArgumentParser) -> None:
    """``-o``/``--out``/``--output OUT``: the output folder of a batch command."""
    parser.add_argument(
        "-o",
        "--out",
        "--output",
        dest="out",
        type=Path,
        required=True,
        metavar="OUT",
        help="output folder (created if missing)",
    )


def add_model_options(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    """``--preset`` | ``--weights`` (+ ``--refiner-weights``), ``--no-refine``, ``--tta``,
    ``--backend``, ``--device``."""
    group = parser.add_mutually_exclusive_group(required=required)
    default = "" if required else f" (default {DEFAULT_PRESET} without --weights)"
    group.add_argument("--preset", choices=sorted(PRESETS), help="shipped model set" + default)
    group.add_argument(
        "--weights",
        type=Path,
        nargs="+",
        metavar="COARSE.safetensors",
        help="coarse model weights; several files of one kind (e.g. the fold models of "
        "`train --cv-folds`) run as an ensemble that averages their probabilities; "
        "post-processing then defaults to a plain 0.5 threshold (add the switches below)",
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
        "--no-presence-gate",
        dest="presence",
        action="store_false",
        help="keep the coarse model's own mask on every image: without this, a preset that "
        "ships a presence gate (breast-us) leaves the mask of a frame it judges to hold no "
        "object empty (report.json: presence)",
    )
    parser.add_argument(
        "--empty-rescue",
        choices=["auto", "on", "off"],
        default="auto",
        help="where the coarse model's own mask of a 2D image is empty, look again over "
        "overlapping tiles for an object too small for the whole frame (report.json: "
        "empty_rescue): auto (default: the preset's choice, see its model card), on or off",
    )
    parser.add_argument(
        "--tta",
        type=tta_arg,
        metavar="FLIPS",
        help="test-time flips of the coarse model, its probabilities averaged over the image "
        "and the flipped views (one batch): hflip, vflip, hflip,vflip or none (default: the "
        "preset's, see its model card; with --weights the weights' own, else none)",
    )
    parser.add_argument(
        "--backend",
        choices=["torch", "onnx", "onnx-int8"],
        default="torch",
        help="what runs the models: torch (default), onnx (ONNX Runtime on the CPU; the graphs "
        "are exported to ~/.cache/medrefine/onnx on first use) or onnx-int8 (its int8 graphs, "
        "faster, slightly different masks; LiteMedSAM's image encoder too, for the box engines)",
    )
    add_device_option(parser)


def add_series_option(parser: argparse.ArgumentParser) -> None:
    """``--allow-gaps``: how a command that reads DICOM series takes one with a missing slice."""
    parser.add_argument(
        "--allow-gaps",
        action="store_true",
        help="read a DICOM series whose slices are not evenly spaced (a missing slice) on the "
        "regular grid of its smallest spacing: every slice at its true position, each plane "
        "with no slice filled by linear interpolation and listed (a warning, and "
        "filled_slices in the report); default: refuse such a series",
    )


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
        type=strength_arg,
        help="share of the noise schedule to re-run, in (0, 1]; higher trusts the coarse mask "
        "less; 'auto' picks it per image from how much the refiner disagrees with the mask",
    )
    g.add_argument(
        "--samples", type=int, help="samples per image (> 1 adds sample spread to the uncertainty)"
    )
    g.add_argument("--seed", type=int, help="noise seed (same seed, same mask)")
    g.add_argument("--fusion", choices=FUSIONS, help="how samples are combined")
    g.add_argument(
        "--leave-alone",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep the input mask where the refiner is unsure of its own correction (default: "
        "on; the threshold was calibrated on val)",
    )
    g.add_argument(
        "--keep-input",
        action="store_true",
        default=None,
        help="judge only: keep every mask as it is; the refiner gives its uncertainty map and "
        "review score (report.json decision 'kept: as asked'), e.g. for masks drawn to another "
        "annotation convention than the preset's",
    )


def tta_arg(text: str) -> tuple[str, ...]:
    try:
        return parse_tta(text)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def strength_arg(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 'auto' or a number in (0, 1], got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number in (0, 1], got {text}")
    return value


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


# Output formats: name -> what it writes (the table in ``medrefine.io.formats``).
FORMATS = {name: spec.help for name, spec in OUTPUT_FORMATS.items()}


def add_format_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format",
        default="png",
        metavar="LIST",
        help="comma-separated outputs per input: " + formats_help() + " (default png)",
    )


def add_mask_options(parser: argparse.ArgumentParser) -> None:
    """``--format``, the refinement settings and the post-processing switches: how a command
    that writes masks (``segment``, ``refine``) makes them and what it writes."""
    add_format_option(parser)
    add_refine_options(parser)
    add_postprocess_options(parser)


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
    """``base`` with the command-line switches applied (``PostprocessConfig.with_switches``)."""
    return base.with_switches(
        threshold=args.threshold,
        fill_holes=args.fill_holes,
        keep_largest=args.keep_largest,
        min_object_size=args.min_object_size,
        opening_radius=args.opening,
        closing_radius=args.closing,
        smooth_sigma=args.smooth,
    )


def refine_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        k: getattr(args, k)
        for k in ("steps", "strength", "samples", "seed", "fusion", "leave_alone", "keep_input")
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
    overrides = refine_overrides(args)
    pipe = SegmentationPipeline(
        cpunet_weights=args.weights,
        diffusion_weights=args.refiner_weights,
        device=args.device,
        use_diffusion=use_diffusion,
        preset=preset,
        refine=overrides,
        postprocess=postprocess_config(args, base_post),
        slice_batch=getattr(args, "slice_batch", 8),
        backend="onnx" if backend.startswith("onnx") else "torch",
        quantized=backend == "onnx-int8",
        tta=getattr(args, "tta", None),
        presence=getattr(args, "presence", True),
        empty_rescue=getattr(args, "empty_rescue", "auto"),
    )
    if overrides and pipe.refiner is None:
        logger.warning("--%s ignored: refinement is off (--no-refine)", next(iter(overrides)))
    return pipe


def provenance(pipe: SegmentationPipeline, args: argparse.Namespace) -> dict[str, Any]:
    """``pipe.provenance()`` (kept as a hook for command-specific additions)."""
    prov = pipe.provenance()
    prov["seed"] = prov["refine"]["seed"] if prov.get("refine") else None
    return {**prov, **run_environment(args)}


def series_run(
    args: argparse.Namespace, command: str, started: str, formats: list[str], **source: Any
) -> tuple[SegmentationPipeline, dict[str, Any], dict[str, Any]]:
    """What a PACS front end (``listen``, ``pull``) segments series with: the pipeline, the
    head of its report (one process, no input files: the series come from ``source``) and
    what each series' JSON summary adds (``weights_extra``)."""
    pipe = build_pipeline(args)
    prov = provenance(pipe, args)
    head = run_head(
        command, started, args.out, prov, world_size=1, formats=formats, inputs=[], **source
    )
    return pipe, head, weights_extra(prov)


def run_environment(args: argparse.Namespace) -> dict[str, Any]:
    """What a run's provenance records of where it ran: the Python and torch versions and the
    command's arguments."""
    return {
        "python_version": platform.python_version(),
        "torch_version": _torch_version(),
        "arguments": {k: v for k, v in sorted(vars(args).items()) if k != "func"},
    }


def _torch_version() -> str:
    import torch

    return str(torch.__version__)
