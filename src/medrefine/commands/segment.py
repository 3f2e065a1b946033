"""``medrefine segment INPUT... -o OUT``: segment images with the coarse model and refine the
masks by diffusion.

INPUT may be files, folders (their supported images, not recursive; a folder holding one DICOM
series is one volume) and glob patterns. For each input OUT/<stem>.png holds the mask (0/255, at
the input's size); ``--format`` adds more outputs. A file that cannot be segmented is reported in
one line on stderr and skipped; the exit code is then 2. OUT/report.json records every input's
status, outputs and timings, and the provenance of the run (weights with their SHA-256, settings).

examples:
  medrefine segment scans/ -o masks/ --preset polyp
  medrefine segment "data/*.jpg" -o out/ --weights coarse.safetensors --no-refine
  medrefine segment a.png -o out/ --samples 8 --format png,overlay,uncertainty
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

from medrefine.commands.common import (
    add_format_option,
    add_model_options,
    add_postprocess_options,
    add_refine_options,
    build_pipeline,
    check_formats_fit,
    expand_inputs,
    failure_reason,
    parse_formats,
    prepare_out_dir,
    provenance,
    report_failure,
    unique_stems,
    write_json,
    write_outputs,
)
from medrefine.io import read_image
from medrefine.pipeline import SegmentationPipeline

logger = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "segment",
        help="segment images (coarse model + diffusion refinement)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image file, folder of images, DICOM series folder or glob pattern",
    )
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
    add_model_options(parser)
    add_format_option(parser)
    add_refine_options(parser)
    add_postprocess_options(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    started = datetime.now(UTC).isoformat(timespec="seconds")
    t_start = time.perf_counter()
    formats = parse_formats(args.format, refining=not args.no_refine)
    prepare_out_dir(args.out)
    pipe = build_pipeline(args)
    inputs, problems = expand_inputs(args.inputs)
    records: list[dict[str, Any]] = []
    for spec, reason in problems:
        report_failure(spec, reason)
        records.append({"input": spec, "status": "failed", "error": reason})

    def echo(line: str) -> None:
        tqdm.write(line, file=sys.stderr)

    bar = tqdm(
        list(zip(inputs, unique_stems(inputs), strict=True)),
        desc="segment",
        unit="image",
        disable=True if getattr(args, "quiet", False) else None,
    )
    for path, stem in bar:
        records.append(segment_one(pipe, path, stem, args.out, formats, echo))
    n_failed = sum(r["status"] != "ok" for r in records)
    report = {
        "command": "segment",
        "started": started,
        "seconds": time.perf_counter() - t_start,
        "inputs": args.inputs,
        "out": str(args.out),
        "formats": formats,
        "n_inputs": len(records),
        "n_ok": len(records) - n_failed,
        "n_failed": n_failed,
        "provenance": provenance(pipe, args),
        "files": records,
    }
    write_json(args.out / "report.json", report)
    print(
        f"segmented {len(records) - n_failed} of {len(records)} inputs into {args.out}"
        + (f"; {n_failed} failed (listed in report.json)" if n_failed else "")
    )
    return 2 if n_failed else 0


def segment_one(
    pipe: SegmentationPipeline, path: Path, stem: str, out_dir: Path, formats: list[str], echo
) -> dict[str, Any]:
    """Segment one input and write its outputs; a failure is reported, not raised."""
    t0 = time.perf_counter()
    try:
        loaded = read_image(path)
        check_formats_fit(loaded, formats)
        load_s = time.perf_counter() - t0
        result = pipe.run(loaded)
        t_write = time.perf_counter()
        written = write_outputs(result, out_dir, stem, formats)
    except Exception as err:  # a batch goes on past a bad file (KeyboardInterrupt still stops)
        reason = failure_reason(err)
        report_failure(str(path), reason, echo)
        return {
            "input": str(path),
            "status": "failed",
            "error": reason,
            "seconds": time.perf_counter() - t0,
        }
    timings = {**result.timings, "load": load_s, "write": time.perf_counter() - t_write}
    return {
        "input": str(path),
        "status": "ok",
        "outputs": [p.name for p in written],
        "shape": list(result.mask.shape),
        "foreground_fraction": float((result.mask > 0).mean()),
        "review_score": result.review_score,
        "timings": timings,
        "seconds": time.perf_counter() - t0,
    }
