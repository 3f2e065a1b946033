"""Reading and writing images and masks; ``read_image`` dispatches by content, then suffix.

Readers: ``raster`` (PNG/JPEG/BMP/TIFF), ``dicom`` (files), ``dicom_series`` (folders),
``nifti``; masks: ``masks`` (any format) and ``dicom_seg``; writers: ``writers``; the table of
output formats (names, file names, writers): ``formats``.
"""

from __future__ import annotations

from pathlib import Path

from medrefine.errors import InputError
from medrefine.io.base import LoadedImage, LoadedMask, atomic_output, reading, stem_of
from medrefine.io.formats import OUTPUT_FORMATS, OutputFormat
from medrefine.io.limits import ReadLimits, read_limits, set_read_limits
from medrefine.io.masks import load_mask, read_mask
from medrefine.io.sniff import sniff_format
from medrefine.io.writers import write_float_nifti, write_image_png, write_json, write_mask

__all__ = [
    "OUTPUT_FORMATS",
    "LoadedImage",
    "LoadedMask",
    "OutputFormat",
    "ReadLimits",
    "atomic_output",
    "load_mask",
    "read_image",
    "read_limits",
    "read_mask",
    "set_read_limits",
    "sniff_format",
    "stem_of",
    "write_float_nifti",
    "write_image_png",
    "write_json",
    "write_mask",
]


def read_image(
    path: str | Path,
    *,
    slice: int | None = None,  # noqa: A002
    tiff_pages: str = "stack",
    reorient: bool = True,
    allow_gaps: bool = False,
) -> LoadedImage:
    """Read any supported image: PNG, JPEG, BMP, TIFF, DICOM file or series folder, NIfTI.

    The format is taken from the content (magic bytes, the DICOM ``DICM`` preamble), the suffix
    only breaks ties; a folder is read as one DICOM series.

    Args:
        path: file or DICOM series folder.
        slice: for volumes, the D index of one slice to return as (C, H, W); ``meta["slice"]``
            and ``meta["volume_shape"]`` record it so writers can put a 2D result back.
        tiff_pages: multi-page TIFF handling, ``"stack"`` (volume) or ``"error"``.
        reorient: NIfTI only; see ``medrefine.io.nifti``.
        allow_gaps: DICOM series folders only: read a series whose slices are not evenly
            spaced (a missing slice) on a regular grid, each slice at its true position and the
            planes without a slice filled and listed in ``meta["filled_slices"]``; without it
            such a series is an ``InputError`` (see ``medrefine.io.dicom_series``).

    Returns:
        LoadedImage: float32 array (C, H, W) or (C, D, H, W) in raw units, spacing in mm in
        the same axis order (None if unknown), meta with at least ``format``,
        ``source_dtype`` and ``modality``.

    Raises:
        InputError: missing, empty, corrupt or unusable file (the message names the file).
        UnsupportedFormatError: readable but unsupported (RTSTRUCT, DICOM-SEG, 5D NIfTI...).
        Nothing else leaves it: a file whose header promises more than the decoded-size limit
        (``medrefine.io.limits``) is refused before decoding.
    """
    from medrefine.io.dicom import read_dicom
    from medrefine.io.dicom_series import read_dicom_folder
    from medrefine.io.nifti import read_nifti
    from medrefine.io.raster import read_raster

    path = Path(path)
    with reading(path):
        fmt = sniff_format(path)
        if fmt == "nifti":
            return read_nifti(path, slice=slice, reorient=reorient)
        if fmt == "dicom":
            image = read_dicom(path)
        elif fmt == "dicom-folder":
            image = read_dicom_folder(path, allow_gaps=allow_gaps)
        else:
            image = read_raster(path, fmt=fmt, tiff_pages=tiff_pages)
    if slice is not None:
        image = _take_slice(image, int(slice))
    return image


def _take_slice(image: LoadedImage, index: int) -> LoadedImage:
    if not image.is_volume:
        if index == 0:
            return image
        raise InputError(f"{image.path}: slice {index} asked of a 2D image; it has only slice 0")
    depth = image.array.shape[1]
    if not 0 <= index < depth:
        raise InputError(
            f"{image.path}: slice {index} is outside the volume's 0..{depth - 1} "
            "slices; pick a slice in range"
        )
    meta = dict(image.meta, slice=index, volume_shape=image.spatial_shape)
    spacing = image.spacing[1:] if image.spacing is not None else None
    return LoadedImage(image.array[:, index].copy(), spacing, meta, image.path)
