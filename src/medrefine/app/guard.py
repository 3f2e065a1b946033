"""Who may fetch which file from the web server, and where the server's files live.

Gradio serves every file under its upload/cache folder (uploads, pictures it rendered, the
downloads we return) to anyone who has the URL. ``FileGuard`` narrows that to the browser the
file was meant for: each browser gets an unguessable cookie on its first request; every path
under the cache folder that a response hands to a browser (the page's config, an upload's
answer, a result streamed from the queue) is recorded for that cookie; a ``/file=`` request
for a path under the cache folder is served only to a cookie it was recorded for (403
otherwise). Files elsewhere (the bundled examples, Gradio's static assets) are left to Gradio's
own rules.

``server_root`` is this process's folder for session files, inside Gradio's cache folder so
Gradio serves them in place (no copy under a content hash), created owner-only (0700) and named
after the process id; ``remove_stale_roots`` deletes those of processes that are gone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import unquote

logger = logging.getLogger(__name__)

COOKIE = "medrefine_client"
ROOT_PREFIX = "medrefine-app-"
LEGACY_STALE_S = 3600.0
_SCANNED_TYPES = (b"application/json", b"text/event-stream", b"text/html", b"text/plain")


def cache_folder() -> Path:
    """Gradio's upload and cache folder ($GRADIO_TEMP_DIR or <tmp>/gradio), resolved."""
    from gradio.utils import get_upload_folder

    return Path(os.path.realpath(get_upload_folder()))


_roots: dict[Path, Path] = {}
_roots_lock = threading.Lock()


def server_root() -> Path:
    """This process's session folder root, ``<cache>/medrefine-app-<pid>-<random>`` (0700)."""
    base = cache_folder()
    with _roots_lock:
        root = _roots.get(base)
        if root is None or not root.is_dir():
            base.mkdir(parents=True, exist_ok=True)
            root = base / f"{ROOT_PREFIX}{os.getpid()}-{secrets.token_hex(8)}"
            root.mkdir(mode=0o700)
            _roots[base] = root
        return root


def remove_server_roots() -> None:
    """Delete this process's session folders (shutdown, SIGTERM)."""
    with _roots_lock:
        for root in _roots.values():
            shutil.rmtree(root, ignore_errors=True)
        _roots.clear()


def remove_stale_roots(base: Path | None = None) -> list[Path]:
    """Delete the session folders of medrefine servers that are no longer running (a crash or
    ``kill -9`` leaves them behind), here and in the system's temporary folder; returns them."""
    removed = []
    folders = [base or cache_folder(), Path(tempfile.gettempdir())]
    for folder in dict.fromkeys(folders):
        for root in folder.glob(f"{ROOT_PREFIX}*") if folder.is_dir() else []:
            pid = root.name[len(ROOT_PREFIX) :].split("-")[0]
            if pid.isdigit():
                stale = not _alive(int(pid))
            else:  # an older medrefine's folder (no pid in its name): stale once idle an hour
                stale = time.time() - root.stat().st_mtime > LEGACY_STALE_S
            if root.is_dir() and stale and root.stat().st_uid == os.getuid():
                shutil.rmtree(root, ignore_errors=True)
                removed.append(root)
    if removed:
        logger.info("removed %d stale session folder(s)", len(removed))
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class FileRegistry:
    """Which browser (cookie) may fetch which file under the cache folder."""

    def __init__(self, cache: Path) -> None:
        self.cache = Path(os.path.realpath(cache))
        self._owners: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        prefix = re.escape(str(self.cache).encode())
        self._pattern = re.compile(rb'"(' + prefix + rb'/(?:[^"\\]|\\.)*)"')

    def record(self, client: str, body: bytes) -> None:
        """Record every cache path quoted in a response body for ``client``."""
        for match in self._pattern.finditer(body):
            try:
                path = json.loads(b'"' + match.group(1) + b'"')
            except ValueError:
                continue
            with self._lock:
                self._owners.setdefault(os.path.realpath(path), set()).add(client)
                if len(self._owners) > 200_000:  # bounded: forget files that are gone
                    self._owners = {p: o for p, o in self._owners.items() if os.path.exists(p)}

    def allowed(self, client: str | None, path: str) -> bool:
        real = os.path.realpath(path)
        if not (real == str(self.cache) or real.startswith(str(self.cache) + os.sep)):
            return True  # not ours to judge: Gradio's allowed/blocked paths decide
        with self._lock:
            return client is not None and client in self._owners.get(real, ())

    def forget_uploads(self) -> None:
        """Delete the files recorded outside the session folders (uploads, rendered pictures)
        when the server stops: they are derived from patient data too."""
        with self._lock:
            paths, self._owners = list(self._owners), {}
        for path in paths:
            if ROOT_PREFIX not in path:
                with contextlib.suppress(OSError):
                    Path(path).unlink()
                    Path(path).parent.rmdir()  # Gradio's per-file hash folder, when empty


class FileGuard:
    """ASGI middleware enforcing ``FileRegistry`` on Gradio's ``/file=`` route."""

    def __init__(self, app, registry: FileRegistry) -> None:
        self.app = app
        self.registry = registry

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = _cookie(scope)
        fresh = client is None
        if fresh:
            client = secrets.token_urlsafe(32)
        path = scope.get("path", "")
        if "/file=" in path and scope.get("method") in ("GET", "HEAD"):
            target = unquote(path.split("/file=", 1)[1])
            if not self.registry.allowed(None if fresh else client, target):
                logger.warning("refused %s to a browser it was not sent to", target)
                await _forbidden(send)
                return
            await self.app(scope, receive, send)
            return
        scan = False
        tail = b""

        async def guarded_send(message) -> None:
            nonlocal scan, tail
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                kind = dict(headers).get(b"content-type", b"")
                scan = kind.startswith(_SCANNED_TYPES)
                if fresh:
                    cookie = f"{COOKIE}={client}; Path=/; HttpOnly; SameSite=Strict"
                    headers.append((b"set-cookie", cookie.encode()))
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body" and scan:
                body = tail + message.get("body", b"")
                self.registry.record(client, body)
                tail = body[-4096:]  # a path cut between two chunks is found in the next
            await send(message)

        await self.app(scope, receive, guarded_send)


def _cookie(scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"cookie":
            for part in value.decode("latin-1").split(";"):
                key, _, val = part.strip().partition("=")
                if key == COOKIE and 20 <= len(val) <= 100:
                    return val
    return None


async def _forbidden(send) -> None:
    body = b"File not allowed: it belongs to another session."
    await send(
        {
            "type": "http.response.start",
            "status": 403,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})


def atomic_picture_cache() -> None:
    """Make Gradio write its rendered pictures atomically.

    Gradio 6 stores every picture a callback returns under a hash of its bytes and rewrites
    that file in place on each request (``processing_utils.save_pil_to_cache``). With several
    requests at once, two browsers sent the same picture (the same example image) race: one
    rewrites the file while the other downloads it, and the download is cut short (seen in
    scripts/app_load.py with 20 browsers). Write under a temporary name, rename into place,
    and leave an existing copy alone (same hash, same bytes)."""
    from gradio import processing_utils as pu

    if getattr(pu.save_pil_to_cache, "medrefine_atomic", False):
        return

    def save_pil_to_cache(img, cache_dir: str, name: str = "image", format: str = "webp") -> str:
        data = pu.encode_pil_to_bytes(img, format)
        folder = Path(cache_dir) / pu.hash_bytes(data)
        folder.mkdir(exist_ok=True, parents=True)
        path = (folder / f"{name}.{format}").resolve()
        if not path.exists():
            tmp = folder / f".{name}.{secrets.token_hex(6)}.{format}"
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return str(path)

    save_pil_to_cache.medrefine_atomic = True  # type: ignore[attr-defined]
    pu.save_pil_to_cache = save_pil_to_cache
