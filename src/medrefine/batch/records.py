"""What every batch writes besides a task's own outputs: the output folder, the one-line report
of an input that failed and its report entry, and CSV tables."""

from __future__ import annotations

import csv
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from medrefine.errors import ConfigError, MedrefineError
from medrefine.io import atomic_output
from medrefine.io import write_json as write_json  # the batch's reports import it from here

logger = logging.getLogger(__name__)


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


def echo_above_bar(line: str) -> None:
    """Print ``line`` on stderr without breaking a tqdm progress bar."""
    tqdm.write(line, file=sys.stderr)


def failure_record(
    path: Path | str,
    err: Exception,
    t0: float,
    echo: Callable[[str], None] | None,
    *,
    source: Path | str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Report ``err`` for the input ``path`` (one line on stderr) and return its report entry;
    ``extra`` (e.g. the mask refined) follows ``input``. ``source``: the file read when the
    report names it otherwise (an upload's own name): the message then names it so too."""
    reason = failure_reason(err)
    if source is not None and str(source) != str(path):
        reason = reason.replace(str(source), str(path))
    report_failure(str(path), reason, echo)
    return {
        "input": str(path),
        **extra,
        "status": "failed",
        "error": reason,
        "seconds": time.perf_counter() - t0,
    }
