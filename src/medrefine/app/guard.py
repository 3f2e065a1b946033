"""Who may fetch which file from the web server, which session a file belongs to, and where
the session folders live.

Gradio serves every file under its upload/cache folder (uploads, pictures it rendered, the
downloads we return) to anyone who has the URL. ``FileGuard`` narrows that to the browser the
file was meant for: each browser gets an unguessable cookie on its first request; every path
under the cache folder that a response hands to a browser (the page's config, an upload's
answer, a result streamed from the queue) is recorded for that cookie; a ``/file=`` request
for a path under the cache folder is served only to a cookie it was recorded for (403
otherwise). Files elsewhere (the bundled examples, Gradio's static assets) are left to Gradio's
own rules. The same middleware reads the session (Gradio's ``session_hash``) of each request,
so ``FileRegistry.end_session`` can delete a session's uploads and pictures when it ends.

``server_root`` is this process's folder for session files, inside Gradio's cache folder so
Gradio serves them in place (no copy under a content hash), created owner-only (0700) and named
after the process id. A launched server's cache folder is its own (``workdir``), deleted as a
whole when it stops; ``remove_stale_roots`` deletes the session roots that medrefine versions
before it left directly in Gradio's folder.
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
from urllib.parse import parse_qs, unquote

logger = logging.getLogger(__name__)

COOKIE = "medrefine_client"
ROOT_PREFIX = "medrefine-app-"
LEGACY_STALE_S = 3600.0
_SCANNED_TYPES = (b"application/json", b"text/event-stream", b"text/html", b"text/plain")
_SCANNED_REQUEST_BYTES = 1 << 20  # JSON requests carry paths and settings, not pixels


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
    """Delete the session roots of medrefine servers that are no longer running, left by older
    versions directly in Gradio's folder or the system's temporary folder; returns them."""
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
    """Which browser (cookie) may fetch which file under the cache folder, and which sessions
    sent or were sent it, so that it is deleted when the last of them ends.

    A session is Gradio's ``session_hash`` (one browser tab): the files in its requests'
    inputs (its uploads, but only those sent to the same browser) and in the responses of its
    queue (pictures, downloads) are its files. ``end_session`` deletes them, except the app's
    own (``keep``: the copies of the examples) and those another live session still uses (two
    tabs that uploaded the same image share one file). A session that never ends otherwise
    (no request created a ``Session``, e.g. an upload and its preview only) ends ``idle_s``
    after its last request."""

    def __init__(self, cache: Path, idle_s: float | None = None) -> None:
        self.cache = Path(os.path.realpath(cache))
        self.idle_s = idle_s
        self.keep: set[str] = set()
        self._owners: dict[str, set[str]] = {}  # path -> cookies it was sent to
        self._users: dict[str, set[str]] = {}  # path -> sessions it belongs to
        self._files: dict[str, set[str]] = {}  # session -> its paths
        self._seen: dict[str, float] = {}  # session -> time of its last request
        self._swept = time.monotonic()
        self._lock = threading.Lock()
        prefix = re.escape(str(self.cache).encode())
        self._pattern = re.compile(rb'"(' + prefix + rb'/(?:[^"\\]|\\.)*)"')

    def paths(self, body: bytes) -> list[str]:
        """The cache paths quoted in a JSON or event-stream body, resolved."""
        found = []
        for match in self._pattern.finditer(body):
            try:
                found.append(os.path.realpath(json.loads(b'"' + match.group(1) + b'"')))
            except ValueError:
                continue
        return found

    def record(self, client: str, body: bytes, session: str | None = None) -> None:
        """A response: ``client`` may fetch the cache paths in it; they are ``session``'s."""
        paths = self.paths(body)
        with self._lock:
            for path in paths:
                self._owners.setdefault(path, set()).add(client)
            if len(self._owners) > 200_000:  # bounded: forget files that are gone
                self._owners = {p: o for p, o in self._owners.items() if os.path.exists(p)}
            if session:
                self._use(session, paths)
        self._sweep()

    def record_request(self, client: str, session: str, body: bytes) -> None:
        """A request of ``session``: the cache paths in its inputs that were sent to
        ``client`` are the session's too (a path typed in by hand gives no claim on a file)."""
        with self._lock:
            self._use(session, [p for p in self.paths(body) if client in self._owners.get(p, ())])

    def _use(self, session: str, paths: list[str]) -> None:
        self._seen[session] = time.monotonic()
        files = self._files.setdefault(session, set())
        for path in paths:
            if ROOT_PREFIX not in path:  # session folders go with their Session
                files.add(path)
                self._users.setdefault(path, set()).add(session)

    def allowed(self, client: str | None, path: str) -> bool:
        real = os.path.realpath(path)
        if not (real == str(self.cache) or real.startswith(str(self.cache) + os.sep)):
            return True  # not ours to judge: Gradio's allowed/blocked paths decide
        with self._lock:
            return client is not None and client in self._owners.get(real, ())

    def end_session(self, session: str) -> int:
        """Delete the files of a session that ended (see the class); returns how many."""
        doomed = []
        with self._lock:
            self._seen.pop(session, None)
            for path in self._files.pop(session, set()):
                users = self._users.get(path, set())
                users.discard(session)
                if not users:
                    self._users.pop(path, None)
                    if path not in self.keep:
                        self._owners.pop(path, None)
                        doomed.append(Path(path))
        for path in doomed:
            with contextlib.suppress(OSError):
                path.unlink()
            if path.parent != self.cache:
                with contextlib.suppress(OSError):
                    path.parent.rmdir()  # Gradio's per-file hash folder, when empty
        return len(doomed)

    def _sweep(self) -> None:
        """End the sessions idle longer than ``idle_s`` (checked once a minute)."""
        now = time.monotonic()
        if self.idle_s is None or now - self._swept < 60:
            return
        with self._lock:
            self._swept = now
            idle = [s for s, seen in self._seen.items() if now - seen > self.idle_s]
        for session in idle:
            self.end_session(session)


class FileGuard:
    """ASGI middleware enforcing ``FileRegistry`` on Gradio's ``/file=`` route and telling it
    which session each request and response belongs to."""

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
        session = _session_in_query(scope)  # the queue's event stream: ?session_hash=...
        if scope.get("method") == "POST" and _header(scope, b"content-type").startswith(
            b"application/json"
        ):
            chunks: list[bytes] = []
            size = 0

            async def reading_receive():  # a JSON request names its session in its body
                nonlocal session, size
                message = await receive()
                if message["type"] == "http.request":
                    body = message.get("body", b"")
                    size += len(body)
                    if size <= _SCANNED_REQUEST_BYTES:
                        chunks.append(body)
                        if not message.get("more_body", False):
                            found = _session_in_body(b"".join(chunks))
                            if found:
                                session = session or found
                                if not fresh:
                                    self.registry.record_request(client, found, b"".join(chunks))
                return message

            receive_next = reading_receive
        else:
            receive_next = receive
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
                self.registry.record(client, body, session)
                tail = body[-4096:]  # a path cut between two chunks is found in the next
            await send(message)

        await self.app(scope, receive_next, guarded_send)


def _header(scope, name: bytes) -> bytes:
    for key, value in scope.get("headers", []):
        if key == name:
            return value
    return b""


def _session_in_query(scope) -> str | None:
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("session_hash")
    return _valid_session(values[0]) if values else None


def _session_in_body(body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return _valid_session(data.get("session_hash")) if isinstance(data, dict) else None


def _valid_session(value) -> str | None:
    return value if isinstance(value, str) and 0 < len(value) <= 100 else None


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
