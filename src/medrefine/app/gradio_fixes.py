"""Three places where Gradio 6 leaves files behind or races on them, fixed for this app.

- ``atomic_picture_cache``: a rendered picture is rewritten in place while another browser
  downloads it (the download is cut short).
- ``no_empty_upload_files``: every event that takes a ``gr.File`` leaves an empty ``tmp*`` file
  in the upload folder.
- ``UploadCleanup`` (ASGI middleware): an upload that does not finish (the browser went away,
  the file was too large, its name was refused) leaves its partial bytes in ``tmp*``.

``apply`` installs the first two and lets the middleware see the parsers' files (idempotent);
``launch`` adds the middleware. Each fix checks that the Gradio code it replaces is still
there, and tests/app/test_workdir.py checks the effect on a running server, so a Gradio
upgrade that changes them fails a test.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import logging
import os
import secrets
from pathlib import Path

logger = logging.getLogger(__name__)

# The temporary files of the multipart parsers of the request being served (UploadCleanup).
_request_uploads: contextvars.ContextVar[list[list] | None] = contextvars.ContextVar(
    "medrefine_request_uploads", default=None
)


def apply() -> None:
    atomic_picture_cache()
    no_empty_upload_files()
    _track_upload_files()


def atomic_picture_cache() -> None:
    """Make Gradio write its rendered pictures atomically.

    Gradio 6 stores every picture a callback returns under a hash of its bytes and rewrites
    that file in place on each request (``processing_utils.save_pil_to_cache``). With several
    requests at once, two browsers sent the same picture (the same example image) race: one
    rewrites the file while the other downloads it, and the download is cut short (seen in
    scripts/app_load.py with 20 browsers). Write under a temporary name, rename into place,
    and leave an existing copy alone (same hash, same bytes)."""
    from gradio import processing_utils as pu

    if getattr(pu.save_pil_to_cache, "medrefine_fixed", False):
        return

    def save_pil_to_cache(img, cache_dir: str, name: str = "image", format: str = "webp") -> str:
        data = _jpeg_bytes(img) if format.lower() in ("jpeg", "jpg") else \
            pu.encode_pil_to_bytes(img, format)
        folder = Path(cache_dir) / pu.hash_bytes(data)
        folder.mkdir(exist_ok=True, parents=True)
        path = (folder / f"{name}.{format}").resolve()
        if not path.exists():
            tmp = folder / f".{name}.{secrets.token_hex(6)}.{format}"
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return str(path)

    save_pil_to_cache.medrefine_fixed = True  # type: ignore[attr-defined]
    pu.save_pil_to_cache = save_pil_to_cache


def _jpeg_bytes(img) -> bytes:
    """A result picture as JPEG at quality 90 (Gradio's own call leaves PIL's 75, which blurs
    the one-pixel contour lines)."""
    with io.BytesIO() as out:
        img.convert("RGB").save(out, "JPEG", quality=90)
        return out.getvalue()


def no_empty_upload_files() -> None:
    """``gr.File`` (type "filepath") without the empty file it makes per event.

    Gradio 6's ``File._process_single_file`` opens ``NamedTemporaryFile(delete=False)`` in the
    upload folder, renames the Python object to the upload's path and returns that path: the
    temporary file itself is never used nor deleted. Same check, same result, no file."""
    import gradio_client.utils as client_utils
    from gradio import components
    from gradio.exceptions import Error
    from gradio.utils import NamedString

    original = getattr(components.File, "_process_single_file", None)
    if original is None or getattr(original, "medrefine_fixed", False):
        return

    def _process_single_file(self, f):
        if self.type != "filepath":
            return original(self, f)
        if self.file_types and not client_utils.is_valid_file(f.path, self.file_types):
            raise Error(
                "Invalid file type. Please upload a file that is one of these formats: "
                f"{self.file_types}"
            )
        return NamedString(f.path)

    _process_single_file.medrefine_fixed = True  # type: ignore[attr-defined]
    components.File._process_single_file = _process_single_file


def _track_upload_files() -> None:
    """Let ``UploadCleanup`` see the temporary files of each multipart parser."""
    from gradio import route_utils

    parser = route_utils.GradioMultiPartParser
    original = parser.parse
    if getattr(original, "medrefine_fixed", False):
        return

    async def parse(self):
        tracked = _request_uploads.get()
        files = getattr(self, "_files_to_close_on_error", None)
        if tracked is not None and isinstance(files, list):
            tracked.append(files)  # the list fills while the body streams in
        return await original(self)

    parse.medrefine_fixed = True  # type: ignore[attr-defined]
    parser.parse = parse


class UploadCleanup:
    """ASGI middleware: when a POST request ends, delete the temporary files its multipart
    bodies were written to that are still under their temporary name. A finished upload has
    been renamed into ``<sha>/<name>`` by then; what is left is a partial or refused one."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        from starlette.requests import ClientDisconnect

        tracked: list[list] = []
        token = _request_uploads.set(tracked)
        try:
            await self.app(scope, receive, send)
        except ClientDisconnect:  # nobody left to answer; one line instead of a traceback
            logger.info("%s: the browser went away during the request", scope.get("path"))
        finally:
            _request_uploads.reset(token)
            for files in tracked:
                for file in files:
                    with contextlib.suppress(Exception):
                        file.close()
                    with contextlib.suppress(OSError):
                        os.unlink(file.name)
                        logger.info("removed an unfinished upload (%s)", Path(file.name).name)
