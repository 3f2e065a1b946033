"""``medrefine segment --dicomweb URL``: the command side of the PACS pull (``pacs/pull.py``):
its options turned into a DICOMweb config and a pipeline, the batch run, the summary line."""

from __future__ import annotations

import argparse
import logging
from datetime import UTC, datetime

from medrefine.batch import open_batch
from medrefine.batch.guard import check_writable
from medrefine.batch.report import summary_line
from medrefine.batch.segment import warn_if_settings_changed
from medrefine.commands.options import parse_formats, series_run
from medrefine.errors import ConfigError
from medrefine.pacs.config import DicomwebConfig, parse_query
from medrefine.pacs.dicomweb import DicomwebServer, ServerUnreachable
from medrefine.pacs.pull import (
    DEFAULT_FORMATS,
    SeriesRunner,
    lost_summary,
    plan_lines,
    select_series,
)


def config_from_args(args: argparse.Namespace) -> DicomwebConfig:
    return DicomwebConfig(
        url=args.dicomweb,
        study=args.study,
        series=args.series,
        query=parse_query(args.query),
        push=args.push,
        overwrite=args.overwrite,
        ca_bundle=args.ca_bundle,
        timeout=args.pacs_timeout,
    )


def run(args: argparse.Namespace) -> int:
    """The ``segment --dicomweb`` command; returns the exit code (2 when a series failed)."""
    started = datetime.now(UTC).isoformat(timespec="seconds")
    if args.inputs:
        raise ConfigError(
            f"give INPUT files or --dicomweb, not both (got {len(args.inputs)} INPUT(s))"
        )
    config = config_from_args(args)
    if getattr(args, "verbose", 0) < 2:
        # dicomweb-client's retry decorator logs every failed request with its traceback;
        # medrefine says what failed in one line (the traceback with -vv).
        logging.getLogger("retrying").setLevel(logging.ERROR)
    formats = parse_formats(args.format or DEFAULT_FORMATS, refining=not args.no_refine)
    if config.push and "dicom-seg" not in formats:
        raise ConfigError("--push stores the DICOM-SEG: add dicom-seg to --format")
    if args.slice_batch < 1:
        raise ConfigError(f"--slice-batch {args.slice_batch}: give at least 1 slice")
    server = DicomwebServer(config)
    server.check()  # unreachable server, wrong credentials: one line before anything else
    targets = select_series(server, config)
    if args.list_only:
        for line in plan_lines(server, config, targets):
            print(line)
        return 0
    check_writable(args.out)
    return _pull(args, server, config, targets, formats, started)


def _pull(args, server, config, targets, formats, started) -> int:
    """Segment (and push) the ``targets`` into OUT."""
    with open_batch(args.out, quiet=getattr(args, "quiet", False), torchrun=False) as batch:
        dicomweb = {
            "url": config.url,
            "study": config.study,
            "series": config.series,
            "query": config.query,
            "push": config.push,
        }
        pipe, head, file_extra = series_run(args, "segment", started, formats, dicomweb=dicomweb)
        warn_if_settings_changed(args.out, head["provenance"], formats, config.overwrite)
        runner = SeriesRunner(
            server,
            config,
            pipe,
            args.out,
            formats,
            file_extra,
            batch.earlier,
            allow_gaps=getattr(args, "allow_gaps", False),
        )
        report = batch.run(runner, runner.jobs(targets), head)
    if runner.lost is not None:
        raise ServerUnreachable(
            config.url.rstrip("/"),
            runner.lost.why,
            lost_summary(report["files"], args.out),
        )
    lead = f"segmented {report['n_ok']} of {report['n_inputs']} inputs into {args.out}"
    line = summary_line(report, lead)
    if report["n_not_image"]:
        line += f"; {report['n_not_image']} not image series (SEG, SR, ...) skipped"
    if config.push:
        line += f"; {report['n_pushed']} SEG(s) stored on {config.url}"
    print(line)
    return 2 if report["n_failed"] else 0
