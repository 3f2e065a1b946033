"""``medrefine lung-pathology CT [CT ...] -o OUT``: unsupervised lung pathology on CT
(DiffSegLung): healthy lung, emphysema, ground-glass, consolidation, fibrosis.

CT may be NIfTI volumes, DICOM series (folders), DICOM files or single slices, in Hounsfield
units (``--intensity hu``, the default). For 8-bit slices (no HU) ``--intensity rank`` applies
the same naming rules to intensity ranks inside the lung, with the lung masks found by stem in
``--lung-masks DIR`` (else an intensity threshold).

For each input: OUT/<stem>.nii.gz, the label map (0 outside the lung, 1 healthy, 2 emphysema,
3 ground-glass, 4 consolidation, 5 fibrosis) in the input's geometry; OUT/<stem>.dcm, a
DICOM-SEG with one segment per class (DICOM inputs); OUT/<stem>_overlay.png, a montage; and
OUT/<stem>.json with each class's voxels, mL and fraction of the lung. ``--format`` picks
among nifti, png, dicom-seg, overlay, json (default nifti,overlay,json).

Batch behaviour as ``medrefine segment``: an input that fails (not CT, 8-bit passed as HU, no
lung...) is reported in one line and skipped, the exit code is then 2; OUT/report.json and
report.csv list every input; a re-run skips the inputs whose outputs are all there
(``--overwrite`` redoes them); outputs are written atomically; Ctrl-C or SIGTERM writes the
report so far (marked interrupted); under torchrun the inputs are shared out.

examples:
  medrefine lung-pathology chest.nii.gz scans/series1/ -o out/
  medrefine lung-pathology slices/*.png -o out/ --intensity rank --lung-masks lungs/
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from medrefine.batch import Job, open_batch
from medrefine.batch.guard import (
    REPORTS,
    ReadFiles,
    check_writable,
    option_files,
    refuse_replacing_reads,
)
from medrefine.batch.inputs import expand_inputs, probe_kind, unique_stems
from medrefine.batch.report import run_head, summary_line
from medrefine.commands.options import add_series_option
from medrefine.errors import ConfigError

CSV_COLUMNS = [
    "input",
    "status",
    "outputs",
    "seconds",
    "error",
    "lung_ml",
    "abnormal_fraction_of_lung",
    "partial_coverage",
    "rank",
]


def add_parser(sub) -> None:
    p = sub.add_parser(
        "lung-pathology",
        help="unsupervised lung pathology on CT (DiffSegLung)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="CT",
        help="CT volume/slice file, DICOM series folder, folder or glob pattern",
    )
    p.add_argument("-o", "--out", required=True, type=Path, help="output folder")
    p.add_argument(
        "--format",
        default=None,
        help="comma-separated: nifti, png, dicom-seg, overlay, json (default nifti,overlay,json)",
    )
    p.add_argument(
        "--intensity",
        choices=("hu", "rank"),
        help="hu: CT in Hounsfield units (default); rank: 8-bit slices",
    )
    p.add_argument(
        "--lung-masks",
        type=Path,
        metavar="DIR",
        help="lung masks by input stem (DIR/<stem>.png...), used instead of the computed mask",
    )
    p.add_argument(
        "--weights",
        type=Path,
        help="weights from medrefine train --stage lungpath (default: the shipped model)",
    )
    p.add_argument(
        "--config",
        type=Path,
        help="YAML with the inference sections (mask, features, cluster, naming, fusion)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="redo inputs whose outputs are all in OUT already"
    )
    add_series_option(p)
    p.set_defaults(func=run)


def parse_formats(text: str | None) -> list[str]:
    from medrefine.lungpath.outputs import DEFAULT_FORMATS, FORMATS

    formats = [f.strip().lower() for f in (text or DEFAULT_FORMATS).split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ConfigError(f"--format {text!r}: unknown {bad}; choose from {', '.join(FORMATS)}")
    return list(dict.fromkeys(formats))


def run(args) -> int:
    started = datetime.now(UTC).isoformat(timespec="seconds")
    formats = parse_formats(args.format)
    if args.lung_masks is not None and not args.lung_masks.is_dir():
        raise ConfigError(f"--lung-masks {args.lung_masks}: not a folder")
    check_writable(args.out)
    ignored: list[tuple[str, str]] = []
    inputs, problems = expand_inputs([str(s) for s in args.inputs], ignored)
    inputs = sorted(inputs, key=str)
    jobs = [Job(p, s) for p, s in zip(inputs, unique_stems(inputs), strict=True)]
    refuse_replacing_inputs(jobs, formats, args)
    with open_batch(args.out, overwrite=args.overwrite, quiet=args.quiet) as batch:
        from medrefine.lungpath.pipeline import LungPathologyPipeline

        pipe = LungPathologyPipeline(args.weights, args.config, args.intensity)
        batch.add_problems(problems)
        head = run_head(
            "lung-pathology",
            started,
            args.out,
            {**pipe.provenance(), "seed": pipe.cfg.cluster.seed},
            world_size=batch.ranks.world_size,
            formats=formats,
            inputs=[str(s) for s in args.inputs],
            ignored=[{"input": e, "why": w} for e, w in ignored],
        )
        report = batch.run(LungPathologyTask(pipe, args, formats), jobs, head)
        if batch.ranks.is_main:
            n_ok, n = report["n_ok"], report["n_inputs"]
            lead = f"lung-pathology: {n_ok} of {n} inputs into {args.out}"
            print(summary_line(report, lead))
        return batch.exit_code(report)


def refuse_replacing_inputs(jobs: list[Job], formats: list[str], args) -> None:
    """Refuse (``OutputError``) outputs that would replace an input CT, a member of an
    input series, a lung mask, the weights or the config, before the model is loaded."""
    from medrefine.lungpath.outputs import output_name

    reads = ReadFiles([job.source for job in jobs])
    for path in option_files(args, "lung_masks", "weights", "config"):
        reads.add(path)
    outputs = [args.out / n for n in REPORTS]
    for job in jobs:  # every format's name: DICOM-SEG too, whatever the input is
        outputs.extend(args.out / output_name(job.stem, fmt) for fmt in formats)
    refuse_replacing_reads(outputs, reads, args.out)


class LungPathologyTask:
    """Analyse each job's CT (``Job.source``) and write its outputs as ``<Job.stem>.*``."""

    name, unit = "lung-pathology", "input"
    columns, weights = CSV_COLUMNS, ("lungpath",)

    def __init__(self, pipe, args, formats: list[str]) -> None:
        self.pipe, self.args, self.formats = pipe, args, formats
        self.extra = {"weights_sha256": pipe.provenance()["weights"]["lungpath"]["sha256"]}

    def outputs(self, job: Job) -> list[str]:
        return expected_names(Path(job.source), job.stem, self.formats)

    def make(self, job: Job, echo) -> dict[str, Any]:
        return analyse_one(self.pipe, Path(job.source), job.stem, self.args, self.formats,
                           self.extra, echo)  # fmt: skip


def expected_names(path: Path, stem: str, formats: list[str]) -> list[str]:
    """Outputs of an input; DICOM-SEG only for DICOM inputs (decided from the header)."""
    from medrefine.io import OUTPUT_FORMATS
    from medrefine.lungpath.outputs import output_name

    names = []
    for fmt in formats:
        if OUTPUT_FORMATS[fmt].needs_input == "dicom" and not probe_kind(path).dicom:
            continue
        names.append(output_name(stem, fmt))
    return names


def analyse_one(
    pipe, path: Path, stem: str, args, formats: list[str], extra: dict[str, Any], echo
) -> dict[str, Any]:
    """Analyse one input and write its outputs; a failure is raised (the batch reports it)."""
    from medrefine.io import OUTPUT_FORMATS, read_image, read_mask
    from medrefine.lungpath.outputs import coverage_warning, write_result
    from medrefine.lungpath.pipeline import check_lung_mask_shape

    t0 = time.perf_counter()
    image = read_image(path, allow_gaps=getattr(args, "allow_gaps", False))
    lung = None
    if args.lung_masks is not None:
        found = sorted(args.lung_masks.glob(f"{stem}.*"))
        if not found:
            raise ConfigError(f"{path}: no lung mask {args.lung_masks}/{stem}.* for it")
        lung = check_lung_mask_shape(read_mask(found[0]), image, str(found[0]))
    result = pipe.run(image, lung)
    written = write_result(result, args.out, stem, formats, extra)
    warning = coverage_warning(result, str(path))
    if warning is not None:
        echo(warning)
    out = {
        "input": str(path),
        "status": "ok",
        "outputs": [p.name for p in written],
        "shape": list(result.labels.shape),
        "lung_ml": result.lung_ml,
        "abnormal_fraction_of_lung": 1.0 - result.classes["healthy"]["fraction_of_lung"],
        "partial_coverage": result.partial_coverage,
        "classes": {k: v["fraction_of_lung"] for k, v in result.classes.items()},
        "timings": result.timings,
        "seconds": time.perf_counter() - t0,
    }
    refusals = {f: OUTPUT_FORMATS[f].refusal(image.meta.get("format")) for f in formats}
    skipped = {f: why for f, why in refusals.items() if why is not None}  # DICOM-SEG
    if skipped:
        out["skipped_formats"] = skipped
    return out
