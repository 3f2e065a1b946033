"""``medrefine segment INPUT... -o OUT``: segment images with the coarse model and refine the
masks by diffusion.

INPUT may be files, folders (their supported images, not recursive; a folder holding one DICOM
series is one volume) and glob patterns. For each input OUT/<stem>.png holds the mask (0/255, at
the input's size); ``--format`` picks other outputs (nifti, dicom-seg, overlay, uncertainty,
json). Volumes (3D NIfTI, multi-frame or series DICOM) are segmented slice by slice and written
back as one volume in the input's geometry (``--format nifti`` or ``dicom-seg``).

A file that cannot be segmented is reported in one line on stderr and skipped; the exit code is
then 2. OUT/report.json and OUT/report.csv record every input's status, outputs, seconds and
error; report.json adds the provenance of the run (medrefine version, weights with their
SHA-256, every setting, the seed).

Every output is written under a temporary name and renamed into place. Running the same
command again skips the inputs whose outputs are all there, written from them by medrefine
(``skipped (done)``, as report.json's ``written`` map says; ``--overwrite`` redoes them), so an
interrupted batch (Ctrl-C writes the report so far) resumes where it stopped. An OUT where an
output would replace an input (or a file of an input series, or the weights) is refused before
the model is loaded, as is one that cannot be written or that another run is writing into.
Under ``torchrun --nproc_per_node=N`` the sorted inputs are shared out (rank r takes inputs r,
r+N, ...) and rank 0 merges the ranks' reports.

examples:
  medrefine segment scans/ -o masks/ --preset polyp
  medrefine segment "data/*.jpg" -o out/ --weights coarse.safetensors --no-refine
  medrefine segment a.png -o out/ --samples 8 --format png,overlay,uncertainty,json
  medrefine segment brain.nii.gz -o out/ --format nifti,json
  torchrun --nproc_per_node=4 -m medrefine.cli segment scans/ -o masks/
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

from medrefine.batch import Job, open_batch
from medrefine.batch.guard import (
    REPORTS,
    ReadFiles,
    check_writable,
    option_files,
    refuse_replacing_reads,
)
from medrefine.batch.inputs import expand_inputs, unique_stems
from medrefine.batch.report import run_head, summary_line, weights_extra
from medrefine.batch.segment import SegmentTask, planned_names, warn_if_settings_changed
from medrefine.commands.options import (
    add_mask_options,
    add_model_options,
    add_out_option,
    add_series_option,
    build_pipeline,
    parse_formats,
    provenance,
)
from medrefine.errors import ConfigError
from medrefine.pacs.options import add_dicomweb_options


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "segment",
        help="segment images (coarse model + diffusion refinement)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="image file, folder of images, DICOM series folder or glob pattern "
        "(or --dicomweb URL)",
    )
    add_out_option(parser)
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="segment every input again, even those whose outputs are all in OUT already",
    )
    parser.add_argument(
        "--slice-batch",
        type=int,
        default=8,
        metavar="N",
        help="volume slices the coarse model segments at once (default 8)",
    )
    add_model_options(parser)
    add_mask_options(parser)
    add_series_option(parser)
    add_dicomweb_options(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    started = datetime.now(UTC).isoformat(timespec="seconds")
    if getattr(args, "dicomweb", None):
        from medrefine.commands.pull import run as run_dicomweb

        return run_dicomweb(args)
    if not args.inputs:
        raise ConfigError("give one or more INPUT files, folders or patterns (or --dicomweb URL)")
    formats = parse_formats(args.format or "png", refining=not args.no_refine)
    if args.slice_batch < 1:
        raise ConfigError(f"--slice-batch {args.slice_batch}: give at least 1 slice")
    check_writable(args.out)
    ignored: list[tuple[str, str]] = []  # entries that are not images: listed, not failed
    inputs, problems = expand_inputs(args.inputs, ignored)
    inputs = sorted(inputs, key=str)  # the same order (and stems) on every rank and re-run
    jobs = [Job(p, s) for p, s in zip(inputs, unique_stems(inputs), strict=True)]
    refuse_replacing_inputs([(j.source, j.stem) for j in jobs], formats, args)
    quiet = getattr(args, "quiet", False)
    with open_batch(args.out, overwrite=args.overwrite, quiet=quiet, device=args.device) as batch:
        args.device = batch.device  # under torchrun on GPUs: this rank's GPU
        pipe = build_pipeline(args)
        prov = provenance(pipe, args)
        warn_if_settings_changed(args.out, prov, formats, args.overwrite)
        batch.add_problems(problems)
        head = run_head(
            "segment",
            started,
            args.out,
            prov,
            world_size=batch.ranks.world_size,
            formats=formats,
            inputs=args.inputs,
            ignored=[{"input": entry, "why": why} for entry, why in ignored],
        )
        file_extra = weights_extra(prov)
        task = SegmentTask(pipe, args.out, formats, file_extra, allow_gaps=args.allow_gaps)
        report = batch.run(task, jobs, head)
        if batch.ranks.is_main:
            lead = f"segmented {report['n_ok']} of {report['n_inputs']} inputs into {args.out}"
            print(summary_line(report, lead))
        return batch.exit_code(report)


def refuse_replacing_inputs(
    jobs: list[tuple[Path, str]], formats: list[str], args: argparse.Namespace
) -> None:
    """Refuse (``OutputError``) a run whose outputs would replace an input, a member of an
    input series, or the weights: checked before the model is loaded."""
    reads = ReadFiles([path for path, _ in jobs])
    for path in option_files(args, "weights", "refiner_weights"):
        reads.add(path)
    outputs = [args.out / n for path, stem in jobs for n in planned_names(path, stem, formats)]
    refuse_replacing_reads([*outputs, *(args.out / n for n in REPORTS)], reads, args.out)
