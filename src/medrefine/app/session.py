"""What each browser session owns (its temporary folder, its last result), and how errors
reach the user (``readable_errors``)."""

from __future__ import annotations

import functools
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np

from medrefine.errors import MedrefineError
from medrefine.pipeline import SegmentationResult

logger = logging.getLogger(__name__)


class Session:
    """One browser session's temporary folder and its last result (lives in a ``gr.State``).

    Every request writes into a fresh sub-folder (the previous one is deleted first), so a
    session holds at most one request's files; ``close`` deletes the folder, and the
    ``TemporaryDirectory`` finalizer does so at exit if the session was never closed."""

    def __init__(self):
        self._tmp = tempfile.TemporaryDirectory(prefix="medrefine-app-")
        self.folder = Path(self._tmp.name)
        self.request: Path | None = None
        self.last: Outcome | None = None

    def new_request(self) -> Path:
        if self.request is not None:
            shutil.rmtree(self.request, ignore_errors=True)
        self.request = Path(tempfile.mkdtemp(prefix="request-", dir=self.folder))
        return self.request

    def close(self) -> None:
        self.last = None
        self._tmp.cleanup()


def close_session(session: Session | None) -> None:
    """``delete_callback`` of the session state: the browser left, remove its files."""
    if session is not None:
        session.close()


@dataclass
class Outcome:
    """The last single-image result of a session, kept to write other download formats."""

    result: SegmentationResult
    image01: np.ndarray  # (1|3, H, W) in [0, 1], for pictures
    stem: str


def readable_errors(fn):
    """Turn a ``MedrefineError`` into ``gr.Error`` (its message, no stack trace) and anything
    else into a short message; the traceback of unexpected errors goes to the server log."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except MedrefineError as err:
            raise gr.Error(_short_paths(str(err), args), print_exception=False) from None
        except Exception as err:
            logger.exception("unexpected error in %s", fn.__name__)
            raise gr.Error(
                f"unexpected {type(err).__name__}: {first_line(err)} (details in the server log)",
                print_exception=False,
            ) from None

    return wrapper


def first_line(err: Exception, limit: int = 200) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _short_paths(message: str, args: tuple) -> str:
    """Uploads live at long temporary paths; name them by their file name only."""
    for arg in args:
        if isinstance(arg, str) and arg.startswith(tempfile.gettempdir()):
            message = message.replace(arg, Path(arg).name)
    return message
