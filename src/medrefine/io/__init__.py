"""Reading and writing images and masks; ``read_image`` dispatches by suffix and content."""

from __future__ import annotations

from pathlib import Path

from medrefine.errors import InputError, UnsupportedFormatError
from medrefine.io.base import LoadedImage, stem_of
from medrefine.io.raster import RASTER_SUFFIXES, read_raster

__all__ = ["LoadedImage", "read_image", "stem_of"]


def read_image(path: str | Path, **kwargs) -> LoadedImage:
    """Read any supported image file.

    Raises:
        InputError: missing, empty, corrupt or unusable file (message names the file).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_file() and path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty (0 bytes)")
    suffix = path.suffix.lower()
    if suffix in RASTER_SUFFIXES:
        return read_raster(path, **kwargs)
    raise UnsupportedFormatError(
        f"{path}: unsupported file type {suffix!r}; expected PNG, JPEG, TIFF, BMP, DICOM or NIfTI"
    )
