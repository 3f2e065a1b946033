"""The ``medrefine`` command line. Each sub-command lives in ``medrefine/commands/<name>.py``
and exposes ``add_parser(subparsers)`` (which sets ``func``); this file only wires them up and
turns a ``MedrefineError`` into one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from medrefine import __version__
from medrefine.errors import MedrefineError
from medrefine.io.limits import ReadLimits, set_read_limits

# Explicit list: the order is the order of ``medrefine --help``.
COMMANDS = [
    "segment", "listen", "refine", "inpaint", "lung_pathology", "evaluate", "train", "calibrate",
    "bench", "export", "info", "presets", "app",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medrefine",
        description="Medical image segmentation with diffusion refinement.",
    )
    parser.add_argument("--version", action="version", version=f"medrefine {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"medrefine.commands.{name}").add_parser(sub)
    for command in sub.choices.values():  # every command reads input files
        command.add_argument(
            "--max-decoded-mb",
            type=float,
            default=None,
            metavar="MB",
            help="refuse input files whose header promises more than MB once decoded (default: "
            "a quarter of the free memory, at most 1024)",
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = (
        logging.ERROR
        if args.quiet
        else (
            logging.DEBUG if args.verbose > 1 else logging.INFO if args.verbose else logging.WARNING
        )
    )
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        if getattr(args, "max_decoded_mb", None) is not None:
            set_read_limits(ReadLimits(max_decoded_mb=args.max_decoded_mb))
        return int(args.func(args) or 0)
    except MedrefineError as err:
        print(f"medrefine: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medrefine: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
