"""``medrefine listen -o OUT``: a DICOM receiver (storage SCP) that segments what scanners and
PACS send it.

It accepts CT, MR, CR, DX, US and secondary-capture images by C-STORE and answers C-ECHO.
Received instances are filed by series under OUT/received/<StudyUID>/<SeriesUID>/. A series is
segmented once it is complete: no instance of it arrived for --quiet-seconds and every
association that sent it was released normally (a series cut off by an aborted association is
not segmented until it is sent again). Outputs are named after the Series Instance UID
(default: OUT/<SeriesUID>.dcm, a DICOM-SEG referencing the received images, and
OUT/<SeriesUID>.json); with --send-to the SEG is sent on by C-STORE. OUT/report.json lists every
series, OUT/associations.jsonl every association. Nothing is written outside OUT.

What it lets in: it listens on 127.0.0.1 unless --bind says otherwise (--bind 0.0.0.0 for
scanners on the network); it takes only associations that call its --ae-title (others are
rejected and logged); OUT/received holds at most --max-store-gb (default 20): a C-STORE past
that is refused with status 0xA700 (out of resources) and logged. --pacs-timeout (default 30 s)
bounds the DIMSE timeouts, receiving and sending.

Ctrl-C or SIGTERM stops it cleanly: the series being segmented is finished, the report written;
series still arriving are left unsegmented (listed in the report, then marked interrupted); a
second Ctrl-C stops it mid-series (no partial file is left). A series whose outputs an earlier
run wrote into OUT is skipped (``skipped (done)``; --overwrite segments it again).

examples:
  medrefine listen -o received_out --port 11112 --ae-title MEDREFINE --preset polyp --no-refine
  medrefine listen -o out --bind 0.0.0.0 --max-store-gb 100 --preset polyp
  medrefine listen -o out --send-to pacs.example.org:104:PACS --quiet-seconds 30
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from datetime import UTC, datetime

from medrefine.batch.guard import check_writable, out_lock
from medrefine.commands.options import (
    add_mask_options,
    add_model_options,
    add_out_option,
    parse_formats,
    series_run,
)
from medrefine.errors import ConfigError
from medrefine.io.formats import OUTPUT_FORMATS
from medrefine.pacs.config import DEFAULT_MAX_STORE_GB
from medrefine.pacs.options import add_pacs_timeout_option

DEFAULT_FORMATS = "dicom-seg,json"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "listen",
        help="receive images over DICOM (C-STORE), segment each series, send the SEG on",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_out_option(parser)
    parser.add_argument("--port", type=int, default=11112, help="TCP port (default 11112)")
    parser.add_argument(
        "--ae-title",
        default="MEDREFINE",
        help="this receiver's AE title; associations that call another one are rejected "
        "(default MEDREFINE)",
    )
    parser.add_argument(
        "--bind",
        default="127.0.0.1",
        metavar="ADDRESS",
        help="interface to listen on (default 127.0.0.1, this machine only; give 0.0.0.0 or "
        "the hospital-side address for scanners on the network)",
    )
    parser.add_argument(
        "--max-store-gb",
        type=float,
        default=DEFAULT_MAX_STORE_GB,
        metavar="GB",
        help="what OUT/received may hold; a C-STORE past it is refused with 0xA700 (out of "
        f"resources) (default {DEFAULT_MAX_STORE_GB:g}, 1 GB = 10^9 bytes)",
    )
    add_pacs_timeout_option(parser)
    parser.add_argument(
        "--quiet-seconds",
        type=float,
        default=10.0,
        metavar="S",
        help="a series is complete once nothing of it arrived for S seconds (default 10)",
    )
    parser.add_argument(
        "--send-to",
        metavar="HOST:PORT:AET",
        help="send each DICOM-SEG on to this DICOM node by C-STORE",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="segment a series again even when an earlier run wrote its outputs into OUT",
    )
    add_model_options(parser)
    add_mask_options(parser)
    parser.set_defaults(func=run, format=None)
    return parser


def run(args: argparse.Namespace) -> int:
    from medrefine.pacs.config import Destination, ListenConfig

    send_to = Destination.parse(args.send_to) if args.send_to else None
    config = ListenConfig(
        port=args.port,
        ae_title=args.ae_title,
        bind=args.bind,
        quiet_seconds=args.quiet_seconds,
        send_to=send_to,
        timeout=args.pacs_timeout,
        max_store_gb=args.max_store_gb,
    )
    formats = parse_formats(args.format or DEFAULT_FORMATS, refining=not args.no_refine)
    if "dicom-seg" not in formats and send_to is not None:
        raise ConfigError("--send-to sends the DICOM-SEG: add dicom-seg to --format")
    pictures = [n for n, f in OUTPUT_FORMATS.items() if f.two_d_only]
    if any(f in pictures for f in formats):
        volumes = [n for n in OUTPUT_FORMATS if n not in pictures]
        raise ConfigError(
            f"--format {','.join(formats)}: {' and '.join(pictures)} hold 2D images and "
            f"received series are volumes; use {', '.join(volumes)}"
        )
    _service_logging(args)
    check_writable(args.out)
    with out_lock(args.out):  # one receiver per OUT
        return _serve(args, config, send_to, formats)


def _serve(args: argparse.Namespace, config, send_to, formats: list[str]) -> int:
    """Receive and segment into OUT (held by this process) until Ctrl-C or SIGTERM."""
    from medrefine.pacs.listen import Listener

    listening = {
        "port": config.port,
        "ae_title": config.ae_title,
        "bind": config.bind,
        "quiet_seconds": config.quiet_seconds,
        "send_to": str(send_to) if send_to else None,
        "timeout": config.timeout,
        "max_store_gb": config.max_store_gb,
    }
    started = datetime.now(UTC).isoformat(timespec="seconds")
    pipe, head, file_extra = series_run(args, "listen", started, formats, listen=listening)
    listener = Listener(
        config, args.out, pipe, formats, head, file_extra, overwrite=args.overwrite
    )
    stop = threading.Event()

    def on_signal(signum, frame):
        if stop.is_set():  # a second Ctrl-C: stop now, even mid-series
            raise KeyboardInterrupt
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        listener.start()
        print(
            f"medrefine: listening on {config.bind}:{config.port} as {config.ae_title}, "
            f"writing to {args.out} (Ctrl-C or SIGTERM stops)",
            file=sys.stderr,
            flush=True,
        )
        listener.serve(stop)
    finally:
        waiting = listener.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    n_ok = sum(r["status"] == "ok" for r in listener.records)
    n_failed = sum(r["status"] == "failed" for r in listener.records)
    line = f"medrefine: stopped; segmented {n_ok} series into {args.out}"
    if n_failed:
        line += f"; {n_failed} failed (listed in report.json)"
    if waiting:
        line += f"; {len(waiting)} incomplete series not segmented (kept in {args.out}/received)"
    print(line, file=sys.stderr)
    return 0


def _service_logging(args: argparse.Namespace) -> None:
    """A service logs its associations and series by default (-q: errors only); the DICOM
    libraries' own chatter only with -vv."""
    if not args.quiet:
        logging.getLogger("medrefine.pacs").setLevel(logging.INFO)
    if args.verbose < 2:
        for name in ("pynetdicom", "highdicom"):
            logging.getLogger(name).setLevel(logging.WARNING)
