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
import contextlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tqdm import tqdm

from medrefine.commands.guard import (
    REPORTS,
    SKIPPED,
    ReadFiles,
    check_writable,
    earlier_outputs,
    is_done,
    option_files,
    out_lock,
    planned_names,
    refuse_replacing_reads,
    written_outputs,
)
from medrefine.commands.inputs import expand_inputs, unique_stems
from medrefine.commands.options import (
    add_mask_options,
    add_model_options,
    add_out_option,
    add_series_option,
    build_pipeline,
    parse_formats,
    provenance,
)
from medrefine.commands.outputs import (
    check_formats_fit,
    echo_above_bar,
    failure_record,
    report_failure,
    result_record,
    skipped_formats,
    write_csv,
    write_json,
    write_outputs,
)
from medrefine.errors import ConfigError, MedrefineError, OutputError
from medrefine.io import read_image
from medrefine.pacs.options import add_dicomweb_options
from medrefine.pipeline import SegmentationPipeline
from medrefine.training.distributed import DistInfo

logger = logging.getLogger(__name__)

CSV_COLUMNS = ["input", "status", "outputs", "seconds", "error", "rank"]
CSV_PROVENANCE = ["medrefine_version", "coarse_sha256", "refiner_sha256", "seed"]
# A rank that finishes early waits at the barrier for the slowest one; gloo's default of
# 30 minutes is too short for big batches of volumes.
BARRIER_TIMEOUT = timedelta(hours=48)


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
    t_start = time.perf_counter()
    if getattr(args, "dicomweb", None):
        from medrefine.pacs.pull import run as run_dicomweb

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
    all_jobs = list(zip(inputs, unique_stems(inputs), strict=True))
    refuse_replacing_inputs(all_jobs, formats, args)
    earlier = earlier_outputs(args.out)  # before the first write of this run
    info = start_distributed(args)
    try:
        with lock_for_run(args.out, info):
            pipe = build_pipeline(args)
            pipe.slice_batch = args.slice_batch
            prov = provenance(pipe, args)
            warn_if_settings_changed(args.out, prov, formats, args.overwrite)
            jobs = all_jobs[info.rank :: info.world_size]
            records: list[dict[str, Any]] = []
            if info.is_main:
                for spec, reason in problems:
                    report_failure(spec, reason)
                    records.append({"input": spec, "status": "failed", "error": reason})
            head = {
                "command": "segment",
                "started": started,
                "inputs": args.inputs,
                "out": str(args.out),
                "formats": formats,
                "ignored": [{"input": entry, "why": why} for entry, why in ignored],
                "world_size": info.world_size,
                "provenance": prov,
            }
            file_extra = {"weights": {k: v["sha256"] for k, v in prov["weights"].items()}}
            try:
                with _sigterm_as_interrupt():
                    for path, stem in _progress(jobs, args, info):
                        records.append(
                            process_one(
                                pipe,
                                path,
                                stem,
                                args.out,
                                formats,
                                args.overwrite,
                                file_extra,
                                earlier,
                                allow_gaps=args.allow_gaps,
                            )
                        )
                        records[-1]["rank"] = info.rank
            except KeyboardInterrupt:
                report = finish_report(
                    head, records, t_start, interrupted=True, left=len(jobs), earlier=earlier
                )
                if info.enabled:  # the other ranks may be gone: no barrier, this rank's part only
                    write_json(args.out / f"report.rank{info.rank}.json", report)
                else:
                    write_reports(args.out, report)
                raise
            report = finish_report(head, records, t_start, earlier=earlier)
            if info.enabled:
                report = merge_ranks(args.out, report, info, t_start)
            if info.is_main:
                write_reports(args.out, report)
                for rank in range(info.world_size if info.enabled else 0):
                    (args.out / f"report.rank{rank}.json").unlink(missing_ok=True)
                print(summary_line(report, args.out))
            n_failed = all_ranks_sum(report["n_failed"] if info.is_main else 0, info)
            return 2 if n_failed else 0
    finally:
        stop_distributed(info)


def process_one(
    pipe: SegmentationPipeline,
    path: Path,
    stem: str,
    out_dir: Path,
    formats: list[str],
    overwrite: bool = False,
    file_extra: dict[str, Any] | None = None,
    earlier: dict[str, str] | None = None,
    *,
    allow_gaps: bool = False,
) -> dict[str, Any]:
    """One input: skip it when its outputs are all there, written from it by an earlier run
    (``earlier``, from OUT/report.json), else segment it and write them (``allow_gaps``: see
    ``read_image``). A failure is reported on stderr and in the returned record, never raised."""
    if not overwrite:
        done = completed_outputs(path, stem, formats, out_dir, earlier or {})
        if done is not None:
            logger.info("%s: outputs already in %s; skipped", path, out_dir)
            return {"input": str(path), "status": SKIPPED, "outputs": done, "seconds": 0.0}
    return segment_one(
        pipe, path, stem, out_dir, formats, echo_above_bar, file_extra, allow_gaps=allow_gaps
    )


def completed_outputs(
    path: Path, stem: str, formats: list[str], out_dir: Path, earlier: dict[str, str]
) -> list[str] | None:
    """The output names of ``path`` when every one of them is in ``out_dir`` and ``earlier``
    (the previous report) says this tool wrote it from ``path``, else None: a file of that
    name that medrefine did not write is not a finished output.

    Outputs are renamed into place only once complete, so a file that exists is whole."""
    names = planned_names(path, stem, formats)
    return names if is_done(names, path, out_dir, earlier) else None


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


@contextlib.contextmanager
def lock_for_run(out_dir: Path, info: DistInfo) -> Iterator[None]:
    """Hold OUT's lock for the run. Under torchrun rank 0 holds it for its group (the ranks
    share OUT) and a refusal stops every rank."""
    if not info.enabled:
        with out_lock(out_dir):
            yield
        return
    with contextlib.ExitStack() as stack:
        refused: MedrefineError | None = None
        if info.is_main:
            try:
                stack.enter_context(out_lock(out_dir))
            except MedrefineError as err:
                refused = err
        if all_ranks_sum(int(refused is not None), info):
            raise refused or OutputError(
                f"-o {out_dir}: another medrefine run is writing into this folder; wait for "
                "it to end or choose another folder"
            )
        yield


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
    extra = skipped_formats(result.image, formats)  # DICOM-SEG asked of a non-DICOM input
    return result_record(path, result, written, t0, t_write, measures, **extra)


# ---------------------------------------------------------------- reports
def finish_report(
    head: dict[str, Any],
    records: list[dict[str, Any]],
    t_start: float,
    *,
    interrupted: bool = False,
    left: int = 0,
    earlier: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The run report; ``written`` maps every output in OUT that medrefine wrote (this run's
    and ``earlier``'s) to its input, which is how a re-run knows what is done."""
    counts = {s: sum(r["status"] == s for r in records) for s in ("ok", SKIPPED, "failed")}
    report = {
        **head,
        "seconds": time.perf_counter() - t_start,
        "n_inputs": len(records),
        "n_ok": counts["ok"],
        "n_skipped": counts[SKIPPED],
        "n_failed": counts["failed"],
        "files": records,
        "written": written_outputs(earlier or {}, records),
    }
    if interrupted:
        report["interrupted"] = True
        report["n_not_started"] = max(left - len(records), 0)
    return report


def write_reports(out_dir: Path, report: dict[str, Any]) -> None:
    """OUT/report.json (everything) and OUT/report.csv (one row per input + provenance)."""
    write_json(out_dir / "report.json", report)
    prov = report["provenance"]
    weights = prov.get("weights", {})
    constant = {
        "medrefine_version": prov.get("medrefine_version"),
        "coarse_sha256": weights.get("coarse", {}).get("sha256"),
        "refiner_sha256": weights.get("refiner", {}).get("sha256"),
        "seed": prov.get("seed"),
    }
    rows = [{**r, **constant} for r in report["files"]]
    write_csv(out_dir / "report.csv", rows, CSV_COLUMNS + CSV_PROVENANCE)


def summary_line(report: dict[str, Any], out_dir: Path) -> str:
    n, n_ok = report["n_inputs"], report["n_ok"]
    line = f"segmented {n_ok} of {n} inputs into {out_dir}"
    if report["n_skipped"]:
        line += f"; {report['n_skipped']} already done (skipped)"
    if report["n_failed"]:
        line += f"; {report['n_failed']} failed (listed in report.json)"
    return line


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


# ---------------------------------------------------------------- torchrun
def start_distributed(args: argparse.Namespace) -> DistInfo:
    """Join the torchrun group (gloo: it only carries a barrier and a sum); one process
    without torchrun. On GPUs each rank takes the GPU of its LOCAL_RANK (ranks share GPUs when
    there are more ranks than GPUs)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistInfo()
    import torch
    import torch.distributed as dist

    from medrefine.training.distributed import init_distributed

    if not dist.is_initialized():
        dist.init_process_group(backend="gloo", timeout=BARRIER_TIMEOUT)
    info = init_distributed(torch.device("cpu"))
    if args.device in ("auto", "cuda") and torch.cuda.is_available():
        args.device = f"cuda:{info.local_rank % torch.cuda.device_count()}"
    return info


def merge_ranks(
    out_dir: Path, report: dict[str, Any], info: DistInfo, t_start: float
) -> dict[str, Any]:
    """Each rank writes report.rank<r>.json; after the barrier rank 0 merges them (the caller
    removes the parts once the merged report is written)."""
    import torch.distributed as dist

    part = out_dir / f"report.rank{info.rank}.json"
    write_json(part, report)
    dist.barrier()
    if not info.is_main:
        return report
    records = []
    for rank in range(info.world_size):
        path = out_dir / f"report.rank{rank}.json"
        records.extend(json.loads(path.read_text())["files"])
    records.sort(key=lambda r: ("rank" in r, r["input"]))  # problems first, then input order
    skip = ("files", "seconds", "written")
    head = {k: v for k, v in report.items() if k not in skip and k[:2] != "n_"}
    return finish_report(head, records, t_start, earlier=report["written"])


def all_ranks_sum(value: int, info: DistInfo) -> int:
    if not info.enabled:
        return value
    from medrefine.training.distributed import all_reduce_sum

    return int(all_reduce_sum([float(value)], info)[0])


def stop_distributed(info: DistInfo) -> None:
    from medrefine.training.distributed import shutdown

    shutdown(info)


# ---------------------------------------------------------------- helpers
def _progress(jobs: list, args: argparse.Namespace, info: DistInfo):
    quiet = getattr(args, "quiet", False) or not info.is_main
    return tqdm(jobs, desc="segment", unit="input", disable=True if quiet else None)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler's stop, ``kill``) ends the batch like Ctrl-C: report written."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
