"""What a command checks before it writes into ``-o OUT``: that OUT can be written, that no
other run is writing into it (a lock), and that no output is, or would replace, a file the run
reads (an input, a mask, a member of a DICOM series, weights). Also which outputs already in
OUT are this tool's own, so a re-run may skip them as done.

Every batch (segment, refine, evaluate, lung-pathology, inpaint, the PACS pull and the DICOM
listener) goes through here before it loads a model; each refusal is one
line, exit code 2 (``OutputError``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from medrefine.batch.records import prepare_out_dir
from medrefine.errors import OutputError

try:  # POSIX; elsewhere runs are not locked
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

LOCK_NAME = ".medrefine.lock"
SKIPPED = "skipped (done)"
REPORTS = ("report.json", "report.csv")


# ---------------------------------------------------------------- OUT itself
def check_writable(out_dir: Path) -> None:
    """Create (if missing) and probe ``out_dir`` by writing a file in it: permission bits
    alone miss read-only file systems and root's view of them."""
    prepare_out_dir(out_dir)
    try:
        fd, probe = tempfile.mkstemp(prefix=".medrefine-probe-", dir=out_dir)
    except OSError as err:
        raise OutputError(
            f"-o {out_dir}: cannot write in this folder ({err.strerror or err}); choose a "
            "folder you can write to"
        ) from err
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)


@contextlib.contextmanager
def out_lock(out_dir: Path) -> Iterator[None]:
    """Hold ``OUT/.medrefine.lock`` (``flock``, not waiting) for the block: a second run on
    the same OUT is refused while the first writes. The file (the holder's pid) is removed
    when the block ends; the kernel drops the lock of a process that ends however it ends,
    so a file a killed run left behind does not stop the next one."""
    lock_path = out_dir / LOCK_NAME
    fd = _locked_fd(lock_path, out_dir)
    try:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            lock_path.unlink()  # still held: whoever opens the old file next sees it gone
        os.close(fd)  # closing the only descriptor releases the lock


def _locked_fd(lock_path: Path, out_dir: Path) -> int:
    """A descriptor of ``lock_path`` holding its lock; the file is opened again when the run
    holding it removed it between our open and our lock (its lock would guard nothing)."""
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            raise OutputError(
                f"-o {out_dir}: cannot write in this folder ({err.strerror or err}); choose a "
                "folder you can write to"
            ) from err
        if fcntl is None:
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            pid = f" (pid {holder})" if holder.isdigit() else ""
            raise OutputError(
                f"-o {out_dir}: another medrefine run{pid} is writing into this folder (it "
                f"holds {lock_path}); wait for it to end or choose another folder"
            ) from err
        except OSError as err:  # e.g. ENOLCK on a file system without locks
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                os.close(fd)
                raise OutputError(
                    f"-o {out_dir}: cannot lock {lock_path} ({err.strerror or err}); choose "
                    "another output folder"
                ) from err
            logger.warning(
                "%s: cannot lock (%s); not guarding against a second run",
                lock_path,
                err.strerror,
            )
            return fd
        try:
            if os.stat(lock_path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


# ---------------------------------------------------------------- files the run reads
class ReadFiles:
    """The files a run reads, by resolved path and by (device, inode), so a symlink, a hard
    link or ``./x`` against ``x`` is still the same file. A folder stands for the files in it
    (a DICOM series, a folder of masks)."""

    def __init__(self, paths: Iterable[Path | str | None] = ()) -> None:
        self._by_path: dict[Path, Path] = {}
        self._by_id: dict[tuple[int, int], Path] = {}
        for path in paths:
            if path is not None:
                self.add(Path(path))

    def add(self, path: Path) -> None:
        if path.is_dir():
            try:
                entries = sorted(path.iterdir())
            except OSError:
                return  # reported when the folder is read
            for entry in entries:
                if entry.is_file():
                    self._add_file(entry)
        elif path.exists():
            self._add_file(path)

    def _add_file(self, path: Path) -> None:
        self._by_path.setdefault(_resolved(path), path)
        with contextlib.suppress(OSError):
            info = path.stat()
            self._by_id.setdefault((info.st_dev, info.st_ino), path)

    def holder(self, output: Path) -> Path | None:
        """The file read that writing ``output`` would replace, or None."""
        found = self._by_path.get(_resolved(output))
        if found is not None:
            return found
        try:
            info = output.stat()
        except OSError:
            return None
        return self._by_id.get((info.st_dev, info.st_ino))


def refuse_replacing_reads(outputs: Iterable[Path], reads: ReadFiles, out_dir: Path) -> None:
    """Raise ``OutputError`` naming the first output that is, or would replace, a file read."""
    for output in outputs:
        held = reads.holder(output)
        if held is not None:
            raise OutputError(
                f"-o {out_dir}: writing {output.name} would overwrite {held}, which this run "
                "reads; choose another output folder"
            )


def option_files(args: Any, *names: str) -> list[Path]:
    """The paths given to the options ``names`` (those set), e.g. weights and config files."""
    found = []
    for name in names:
        value = getattr(args, name, None)
        if isinstance(value, str | Path):
            found.append(Path(value))
    return found


# ---------------------------------------------------------------- what is done
def earlier_outputs(out_dir: Path) -> dict[str, str]:
    """``{output name: input}`` of the files in OUT that this tool wrote, as the previous
    run's report.json lists them (its ``written`` map, else its ok and skipped entries)."""
    try:
        report = json.loads((out_dir / "report.json").read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(report, dict):
        return {}
    written = report.get("written")
    if isinstance(written, dict):
        return {str(k): str(v) for k, v in written.items()}
    return written_outputs({}, report.get("files") or [])


def written_outputs(earlier: dict[str, str], records: list[dict[str, Any]]) -> dict[str, str]:
    """``earlier`` with the outputs this run's records list (an input that is ok or skipped;
    a series whose SEG was written but not pushed), each mapped to its input: an absolute
    path for a file, else as given (a Series UID)."""
    written = dict(earlier)
    for record in records:
        if not isinstance(record, dict):
            continue
        outputs = record.get("outputs")
        if isinstance(outputs, list) and record.get("input") is not None:
            source = input_id(record["input"])
            written.update({Path(str(n)).name: source for n in outputs})
    return dict(sorted(written.items()))


def is_done(names: list[str], source: Path | str, out_dir: Path, earlier: dict[str, str]) -> bool:
    """Every output of ``source`` is in OUT and was written from ``source`` by this tool: a
    file of that name that this tool did not write (an input, a user's file) is not done."""
    if not names:
        return False
    source_id = input_id(source)
    return all(earlier.get(name) == source_id and (out_dir / name).is_file() for name in names)


def input_id(source: Path | str) -> str:
    """An input as the report's ``written`` map names it: its absolute, resolved path when it
    is a file or folder here, else the text given (a Series UID)."""
    path = Path(source)
    return str(_resolved(path)) if os.path.lexists(path) else str(source)


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return path.absolute()
