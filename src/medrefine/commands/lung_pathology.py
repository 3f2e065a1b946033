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
(``--overwrite`` redoes them); outputs are written atomically.

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

from tqdm import tqdm

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
    from medrefine.commands.guard import check_writable, earlier_outputs, out_lock
    from medrefine.commands.inputs import expand_inputs, unique_stems

    started = datetime.now(UTC).isoformat(timespec="seconds")
    t_start = time.perf_counter()
    formats = parse_formats(args.format)
    if args.lung_masks is not None and not args.lung_masks.is_dir():
        raise ConfigError(f"--lung-masks {args.lung_masks}: not a folder")
    check_writable(args.out)
    ignored: list[tuple[str, str]] = []
    inputs, problems = expand_inputs([str(s) for s in args.inputs], ignored)
    inputs = sorted(inputs, key=str)
    jobs = list(zip(inputs, unique_stems(inputs), strict=True))
    refuse_replacing_inputs(jobs, formats, args)
    earlier = earlier_outputs(args.out)  # before the first write of this run
    with out_lock(args.out):
        return _run(args, formats, jobs, problems, ignored, earlier, started, t_start)


def refuse_replacing_inputs(jobs: list[tuple[Path, str]], formats: list[str], args) -> None:
    """Refuse (``OutputError``) outputs that would replace an input CT, a member of an
    input series, a lung mask, the weights or the config, before the model is loaded."""
    from medrefine.commands.guard import (
        REPORTS,
        ReadFiles,
        option_files,
        refuse_replacing_reads,
    )
    from medrefine.lungpath.outputs import output_name

    reads = ReadFiles([path for path, _ in jobs])
    for path in option_files(args, "lung_masks", "weights", "config"):
        reads.add(path)
    outputs = [args.out / n for n in REPORTS]
    for _path, stem in jobs:  # every format's name: DICOM-SEG too, whatever the input is
        outputs.extend(args.out / output_name(stem, fmt) for fmt in formats)
    refuse_replacing_reads(outputs, reads, args.out)


def _run(args, formats, jobs, problems, ignored, earlier, started, t_start) -> int:
    from medrefine.commands.guard import SKIPPED
    from medrefine.commands.outputs import (
        echo_above_bar,
        failure_record,
        report_failure,
        write_csv,
        write_json,
    )
    from medrefine.commands.segment import finish_report
    from medrefine.lungpath.pipeline import LungPathologyPipeline

    pipe = LungPathologyPipeline(args.weights, args.config, args.intensity)
    records: list[dict[str, Any]] = []
    for spec, reason in problems:
        report_failure(spec, reason)
        records.append({"input": spec, "status": "failed", "error": reason})
    head = {
        "command": "lung-pathology",
        "started": started,
        "inputs": [str(s) for s in args.inputs],
        "out": str(args.out),
        "formats": formats,
        "ignored": [{"input": e, "why": w} for e, w in ignored],
        "provenance": {**pipe.provenance(), "seed": pipe.cfg.cluster.seed},
    }
    extra = {"weights_sha256": pipe.provenance()["weights"]["lungpath"]["sha256"]}
    try:
        for path, stem in tqdm(
            jobs, desc="lung-pathology", unit="input", disable=True if args.quiet else None
        ):
            records.append(
                process_one(
                    pipe,
                    path,
                    stem,
                    args,
                    formats,
                    extra,
                    echo_above_bar,
                    failure_record,
                    SKIPPED,
                    earlier,
                )
            )
    except KeyboardInterrupt:
        report = finish_report(
            head, records, t_start, interrupted=True, left=len(jobs), earlier=earlier
        )
        write_json(args.out / "report.json", report)
        raise
    report = finish_report(head, records, t_start, earlier=earlier)
    write_json(args.out / "report.json", report)
    write_csv(args.out / "report.csv", report["files"], CSV_COLUMNS)
    line = f"lung-pathology: {report['n_ok']} of {report['n_inputs']} inputs into {args.out}"
    if report["n_skipped"]:
        line += f"; {report['n_skipped']} already done (skipped)"
    if report["n_failed"]:
        line += f"; {report['n_failed']} failed (listed in report.json)"
    print(line)
    return 2 if report["n_failed"] else 0


def expected_names(path: Path, stem: str, formats: list[str]) -> list[str]:
    """Outputs of an input; DICOM-SEG only for DICOM inputs (decided from the header)."""
    from medrefine.commands.inputs import probe_kind
    from medrefine.io import OUTPUT_FORMATS
    from medrefine.lungpath.outputs import output_name

    names = []
    for fmt in formats:
        if OUTPUT_FORMATS[fmt].needs_input == "dicom" and not probe_kind(path).dicom:
            continue
        names.append(output_name(stem, fmt))
    return names


def process_one(
    pipe,
    path: Path,
    stem: str,
    args,
    formats,
    extra,
    echo,
    failure_record,
    skipped: str,
    earlier: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One input: skipped when an earlier run (``earlier``, from OUT/report.json) wrote all
    its outputs from it, else analysed and written; a failure is reported, not raised."""
    from medrefine.commands.guard import is_done
    from medrefine.errors import MedrefineError
    from medrefine.io import OUTPUT_FORMATS, read_image, read_mask
    from medrefine.lungpath.outputs import coverage_warning, write_result
    from medrefine.lungpath.pipeline import check_lung_mask_shape

    t0 = time.perf_counter()
    if not args.overwrite:
        try:
            names = expected_names(path, stem, formats)
            if is_done(names, path, args.out, earlier or {}):
                return {"input": str(path), "status": skipped, "outputs": names, "seconds": 0.0}
        except MedrefineError:
            pass  # unreadable: run it so the failure is reported
    try:
        image = read_image(path, allow_gaps=getattr(args, "allow_gaps", False))
        lung = None
        if args.lung_masks is not None:
            found = sorted(args.lung_masks.glob(f"{stem}.*"))
            if not found:
                raise ConfigError(f"{path}: no lung mask {args.lung_masks}/{stem}.* for it")
            lung = check_lung_mask_shape(read_mask(found[0]), image, str(found[0]))
        result = pipe.run(image, lung)
        written = write_result(result, args.out, stem, formats, extra)
    except Exception as err:  # the batch goes on past a bad input
        return failure_record(path, err, t0, echo)
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
