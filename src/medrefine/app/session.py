"""What each browser session owns (its temporary folder, its last result), and how errors
reach the user (``readable_errors``)."""

from __future__ import annotations

import functools
import logging
import secrets
import shutil
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np

from medrefine.app.guard import cache_folder, server_root
from medrefine.errors import MedrefineError
from medrefine.pipeline import SegmentationResult

logger = logging.getLogger(__name__)


class Session:
    """One browser session's folder and its last result (lives in a ``gr.State``).

    The folder has an unguessable name inside this server's root (``guard.server_root``:
    Gradio's cache folder, so files are served in place, to this browser only) and is
    owner-only (0700). Every request writes into a fresh sub-folder (the previous one is
    deleted first), so a session holds at most one request's files; ``close`` deletes the
    folder, as does a finalizer if the session is dropped without being closed, and the
    server removes its whole folder at shutdown and those of dead servers at the next start.
    ``session_hash`` is Gradio's name of the browser tab (that of the event that made it):
    when the session ends, the uploads and pictures of that tab are deleted too."""

    def __init__(self, session_hash: str | None = None):
        self.session_hash = session_hash or current_session_hash()
        self.folder = server_root() / secrets.token_urlsafe(24)
        self.folder.mkdir(mode=0o700)
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.folder, True)
        self.request: Path | None = None
        self.last: Outcome | None = None

    def new_request(self) -> Path:
        if self.request is not None:
            shutil.rmtree(self.request, ignore_errors=True)
        self.folder.mkdir(mode=0o700, exist_ok=True)
        self.request = Path(tempfile.mkdtemp(prefix="request-", dir=self.folder))  # 0700
        return self.request

    def close(self) -> None:
        self.last = None
        self._cleanup()


def close_session(session: Session | None) -> None:
    """The browser left (``delete_callback`` of the session state): remove its folder."""
    if session is not None:
        session.close()


def current_session_hash() -> str | None:
    """The Gradio session (browser tab) of the event being handled; None outside an event."""
    from gradio.context import LocalContext

    return getattr(LocalContext.request.get(None), "session_hash", None)


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
    folders = (tempfile.gettempdir(), str(cache_folder()))
    for arg in args:
        if isinstance(arg, str) and arg.startswith(folders):
            message = message.replace(arg, Path(arg).name)
    return message
