"""The web server's own folder: everything it writes lives there, and goes when the server goes.

    <base>/medrefine-servers/        0700; locked (flock) while a server starts
        <pid>-<random>/              0700; locked for as long as its server runs
            gradio/                  GRADIO_TEMP_DIR: uploads (``<sha>/<name>``, ``tmp*`` while
                                     they arrive), the pictures Gradio renders, session folders
            tmp/                     the process's temporary folder (TMPDIR, ``tempfile.tempdir``)

``<base>`` is the operator's ``$GRADIO_TEMP_DIR``, else the system's temporary folder.
``claim`` makes a server's folder and points Gradio and ``tempfile`` into it; ``release``
deletes it (shutdown, SIGTERM). A start first deletes the folders of servers that are gone: the
kernel drops a flock when its process dies, even by ``kill -9``, so a folder whose lock can be
taken is a dead server's, and one whose lock is held belongs to a live server and is left alone
(a reused pid cannot fool it). Folders are made and locked while the root is locked, so a start
never sees a live server's folder unlocked. Nothing else in ``<base>`` is touched.

This module does not import Gradio. ``launch`` claims the folder before it builds the
interface; Gradio reads GRADIO_TEMP_DIR when a component or the server is made, and the few
module constants it copied at import (the screen-recording route's) are re-pointed too.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import secrets
import shutil
import stat
import sys
import tempfile
from pathlib import Path

from medrefine.errors import ConfigError

logger = logging.getLogger(__name__)

ROOT_NAME = "medrefine-servers"
_SERVER_NAME = re.compile(r"\d+-[0-9a-f]{16}")
# Gradio modules that copy GRADIO_TEMP_DIR into a constant when they are imported.
_GRADIO_CONSTANTS = ("gradio.routes", "gradio.route_utils", "gradio.screen_recording_utils")


class ServerFolder:
    """A claimed server folder; ``release`` deletes it and undoes what ``point_here`` set."""

    def __init__(self, path: Path, lock_fd: int) -> None:
        self.path = path
        self.gradio = path / "gradio"
        self.tmp = path / "tmp"
        self._lock_fd: int | None = lock_fd
        self._undo: list[tuple[object, str, object]] = []  # (namespace, name, old value)

    def point_here(self) -> None:
        """GRADIO_TEMP_DIR, TMPDIR and ``tempfile.tempdir`` into this folder, and the copies of
        GRADIO_TEMP_DIR that Gradio's modules took when they were imported."""
        for name, folder in (("GRADIO_TEMP_DIR", self.gradio), ("TMPDIR", self.tmp)):
            self._undo.append((os.environ, name, os.environ.get(name)))
            os.environ[name] = str(folder)
        self._undo.append((tempfile, "tempdir", tempfile.tempdir))
        tempfile.tempdir = str(self.tmp)
        for module_name in _GRADIO_CONSTANTS:
            module = sys.modules.get(module_name)
            if module is not None and isinstance(getattr(module, "DEFAULT_TEMP_DIR", None), str):
                self._undo.append((module, "DEFAULT_TEMP_DIR", module.DEFAULT_TEMP_DIR))
                module.DEFAULT_TEMP_DIR = str(self.gradio)

    def release(self) -> None:
        """Delete the folder, then unlock it (idempotent). What a thread still running writes
        after this lands in an unlocked folder, which the next start deletes."""
        shutil.rmtree(self.path, ignore_errors=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        while self._undo:
            namespace, name, value = self._undo.pop()
            if namespace is os.environ:
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value  # type: ignore[assignment]
            else:
                setattr(namespace, name, value)


def default_base() -> Path:
    """Where the servers' root goes: ``$GRADIO_TEMP_DIR`` or the system's temporary folder."""
    return Path(os.environ.get("GRADIO_TEMP_DIR") or tempfile.gettempdir())


def claim(base: Path | None = None) -> ServerFolder:
    """Delete the folders of dead servers, then make, lock and point to this server's."""
    root = servers_root(base or default_base())
    with _locked(root):
        _remove_dead(root)
        path = root / f"{os.getpid()}-{secrets.token_hex(8)}"
        path.mkdir(mode=0o700)
        fd = _open_dir(path)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    folder = ServerFolder(path, fd)
    for sub in (folder.gradio, folder.tmp):
        sub.mkdir(mode=0o700)
    folder.point_here()
    logger.info("server folder %s", path)
    return folder


def remove_dead_servers(base: Path | None = None) -> list[Path]:
    """Delete the folders of servers that are no longer running; returns them."""
    root = servers_root(base or default_base())
    with _locked(root):
        return _remove_dead(root)


def servers_root(base: Path) -> Path:
    """``<base>/medrefine-servers``, created owner-only; refused if it is not this user's."""
    root = Path(base) / ROOT_NAME
    root.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        root.mkdir(mode=0o700)
    info = os.lstat(root)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise ConfigError(
            f"{root}: expected a folder of this user (uid {os.getuid()}), found "
            f"{'a folder' if stat.S_ISDIR(info.st_mode) else 'something else'} of uid "
            f"{info.st_uid}; remove it or set GRADIO_TEMP_DIR to a folder of your own"
        )
    if info.st_mode & 0o077:
        os.chmod(root, 0o700)
    return root


def _remove_dead(root: Path) -> list[Path]:
    removed = []
    for entry in sorted(root.iterdir()):
        if not _SERVER_NAME.fullmatch(entry.name):
            continue  # not a server folder: not ours to judge
        try:
            fd = _open_dir(entry)
        except OSError:
            continue  # gone meanwhile, or not a folder
        try:
            if os.fstat(fd).st_uid != os.getuid():
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live server's
            except OSError as err:  # no flock here (some network file systems): keep it
                logger.warning("%s: cannot tell whether its server runs (%s); kept", entry, err)
                continue
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
        finally:
            os.close(fd)
    if removed:
        logger.info("removed the folders of %d stopped server(s) under %s", len(removed), root)
    return removed


@contextlib.contextmanager
def _locked(folder: Path):
    fd = _open_dir(folder)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as err:
            raise ConfigError(
                f"{folder}: cannot be locked ({err.strerror}), so a start could not tell a "
                "running server's folder from a dead one's; set GRADIO_TEMP_DIR to a folder "
                "on a local disk"
            ) from err
        yield
    finally:
        os.close(fd)


def _open_dir(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
