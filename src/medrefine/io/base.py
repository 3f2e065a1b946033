"""The object every reader returns and every writer takes back (nnU-Net's reader/writer split)."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medrefine.errors import InputError, MedrefineError

logger = logging.getLogger(__name__)

# Refuse images whose decoded size would exhaust memory (a 16k x 16k RGB float32 is 3 GiB).
MAX_PIXELS_2D = 16384 * 16384
MAX_VOXELS = 1024**3


@dataclass
class LoadedImage:
    """An image as read from disk.

    Attributes:
        array: float32, channel-first, raw units (8-bit stays 0..255, CT in HU):
            (C, H, W) for 2D, (C, D, H, W) for volumes.
        spacing: physical size of a pixel/voxel in mm, same axis order as the spatial axes
            ((row, col) or (slice, row, col)); None when the format does not say.
        meta: what a writer needs to put results back in the same geometry, plus facts for
            ``medrefine info``. Keys always present: ``format`` (png, jpeg, tiff, bmp, dicom,
            nifti), ``source_dtype``, ``modality`` (may be "OT").
        path: the file (or DICOM series folder) it came from, if any.
    """

    array: np.ndarray
    spacing: tuple[float, ...] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def is_volume(self) -> bool:
        return self.array.ndim == 4

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape[1:])

    @property
    def channels(self) -> int:
        return int(self.array.shape[0])

    @property
    def name(self) -> str:
        """File stem without medical double suffixes (``scan.nii.gz`` -> ``scan``)."""
        if self.path is None:
            return "image"
        return stem_of(self.path)


@dataclass
class LoadedMask:
    """A label map as read from disk by ``read_mask``/``load_mask``.

    Attributes:
        mask: uint8 label map without a channel axis, (H, W) or (D, H, W); 0 is background.
            Binary masks stored as 0/255 come back as 0/1.
        spacing: as in ``LoadedImage``.
        meta: ``format``, ``source_dtype``, ``labels`` (sorted label values present), plus for
            DICOM-SEG ``segment_labels`` ({number: label}) and ``referenced_sop_instance_uids``.
        path: the file it came from.
    """

    mask: np.ndarray
    spacing: tuple[float, ...] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def stem_of(path: Path | str) -> str:
    name = Path(path).name
    for suffix in (".nii.gz", ".nii", ".dcm", ".dicom"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def full_suffix(path: Path | str) -> str:
    """Lower-case suffix keeping medical double suffixes (``a.nii.gz`` -> ``.nii.gz``)."""
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix


def check_size(path: Path, shape: tuple[int, ...], limit: int = MAX_VOXELS) -> None:
    """Refuse a file whose header promises more elements than ``limit`` (before decoding)."""
    count = 1
    for n in shape:
        count *= max(int(n), 0)
    if count > limit:
        raise InputError(
            f"{path}: header says shape {tuple(int(n) for n in shape)} ({count:,} values), "
            f"more than the {limit:,} medrefine loads; crop or downsample it first"
        )


@contextlib.contextmanager
def reading(path: Path | str) -> Iterator[None]:
    """The last line of defence of ``read_image``/``load_mask``: whatever a reader or a library
    under it raises for a damaged file leaves as ``InputError`` naming the file.

    Readers catch the failures they expect with a precise message; a message from here says
    "unexpected", which the fuzz harness (tests/fuzz) counts as a bug to fix at its source.
    """
    try:
        yield
    except MedrefineError:
        raise
    except MemoryError as err:
        raise InputError(
            f"{path}: not enough memory to decode the file; free memory or lower its size"
        ) from err
    except Exception as err:
        logger.debug("unexpected error reading %s", path, exc_info=err)
        text = " ".join(str(err).split())[:200]
        raise InputError(
            f"{path}: cannot read the file (unexpected {type(err).__name__}: {text}); the file is "
            "probably damaged"
        ) from err


def finite_float32(array: np.ndarray, path: Path | None) -> np.ndarray:
    """Contiguous float32 copy of ``array``; refuses empty arrays and NaN/inf values."""
    where = f"{path}: " if path is not None else ""
    if array.size == 0 or 0 in array.shape:
        raise InputError(f"{where}image is empty (shape {array.shape}); check the file")
    out = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(out).all():
        raise InputError(
            f"{where}image contains NaN or infinite values; replace them (e.g. with 0) first"
        )
    return out


@contextlib.contextmanager
def atomic_output(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    Parent folders are created. The temporary name keeps the file's suffix (``.nii.gz``, ``.png``)
    so libraries that pick the format by suffix still work. On failure the temporary file is
    removed and ``path`` is left untouched, so a crash never leaves a half-written output.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder; give a file name to write to")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(
            f"{path}: cannot create the output folder ({err}); check the path and your permissions"
        ) from err
    # A fresh random name (not mkstemp) so the file gets the usual permissions from the umask.
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp{full_suffix(path)}"
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(err, OSError):
            raise InputError(
                f"{path}: cannot write the file ({err}); check free disk space and permissions"
            ) from err
        raise
    logger.debug("wrote %s", path)
