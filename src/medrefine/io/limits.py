"""How much memory a file may take once decoded, decided from its header before any decoding.

A 249 KB PNG of 16000 x 16000 zeros, or a 1 MB NIfTI whose header says 1000^3 voxels, decode
to gigabytes. Every reader estimates the decoded size from the header (elements x the bytes of
the stored values plus the float32 copy medrefine keeps, which are both in memory while a file
is read) and refuses the file above ``max_decoded_mb``. The default is tied to the machine: a
quarter of the memory free when the file is read, at most 1024 MB. ``medrefine ... --max-decoded-mb
N`` (or ``set_read_limits``) raises or lowers it for the process.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from medrefine.errors import ConfigError, InputError

logger = logging.getLogger(__name__)

DEFAULT_CAP_MB = 1024.0  # the default never exceeds this, however much memory is free
FREE_SHARE = 0.25  # ... nor this share of the memory free at the time
FLOAT32_BYTES = 4
MB = 1024 * 1024


@dataclass(frozen=True)
class ReadLimits:
    """Limits every reader applies before decoding.

    Attributes:
        max_decoded_mb: largest estimated decoded size in MiB; None picks the default
            (``min(1024, a quarter of the free memory)``, looked up at each read).
    """

    max_decoded_mb: float | None = None

    def __post_init__(self) -> None:
        if self.max_decoded_mb is not None and not self.max_decoded_mb > 0:
            raise ConfigError(
                f"--max-decoded-mb {self.max_decoded_mb}: give a positive number of MB"
            )

    def limit_mb(self) -> float:
        if self.max_decoded_mb is not None:
            return float(self.max_decoded_mb)
        return min(DEFAULT_CAP_MB, FREE_SHARE * available_memory_mb())


_current = ReadLimits()


def set_read_limits(limits: ReadLimits) -> ReadLimits:
    """Set the limits of this process (the CLI's ``--max-decoded-mb``); returns the old ones."""
    global _current
    previous, _current = _current, limits
    return previous


def current_limits() -> ReadLimits:
    return _current


@contextlib.contextmanager
def read_limits(limits: ReadLimits) -> Iterator[None]:
    """Apply ``limits`` inside the block (tests, the fuzz harness)."""
    previous = set_read_limits(limits)
    try:
        yield
    finally:
        set_read_limits(previous)


def available_memory_mb() -> float:
    """Memory the kernel could give this process now (MemAvailable), in MiB."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / MB
    except (ValueError, OSError, AttributeError):
        return 4096.0  # unknown platform: assume a small machine


def decoded_mb(shape: tuple[int, ...], stored_bytes: float) -> float:
    """Estimated MiB while a file of ``shape`` elements stored as ``stored_bytes`` each is read:
    the stored values plus medrefine's float32 copy."""
    count = 1
    for n in shape:
        count *= max(int(n), 0)
    return count * (float(stored_bytes) + FLOAT32_BYTES) / MB


def check_decoded_size(
    path: Path | str, shape: tuple[int, ...], stored_bytes: float, what: str = "values"
) -> None:
    """Refuse ``path`` when the header's ``shape`` would decode to more than the limit.

    Args:
        path: the file (named in the message).
        shape: element counts from the header, e.g. (frames, rows, columns, samples).
        stored_bytes: bytes per stored element (1 for 8-bit, 2 for 16-bit, 0.125 for 1-bit).
        what: what the elements are ("pixels", "voxels"), for the message.

    Raises:
        InputError: a negative dimension, or a decoded size above the limit.
    """
    dims = tuple(int(n) for n in shape)
    if any(n < 0 for n in dims):
        raise InputError(f"{path}: header gives a negative size {dims}; the file is damaged")
    needed = decoded_mb(dims, stored_bytes)
    limit = current_limits().limit_mb()
    if needed > limit:
        count = 1
        for n in dims:
            count *= n
        raise InputError(
            f"{path}: header says {' x '.join(str(n) for n in dims)} ({count:,} {what}), about "
            f"{needed:,.0f} MB decoded, more than the {limit:,.0f} MB limit; downsample or crop "
            "it, or raise the limit with --max-decoded-mb (default: a quarter of free memory, "
            f"at most {DEFAULT_CAP_MB:.0f} MB)"
        )
