"""Read masks and label maps: PNG/BMP/TIFF/JPEG, NIfTI and DICOM-SEG, as uint8 labels.

Conventions: 0 is background; a binary mask stored as 0/255 (or 0/65535) comes back as 0/1;
multi-class masks keep their label values (1, 2, 3...). Palette PNGs keep their palette
indices (that is how label maps are usually stored), not the colours.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from medrefine.errors import InputError, UnsupportedFormatError
from medrefine.io.base import MAX_PIXELS_2D, LoadedImage, LoadedMask, check_size, reading
from medrefine.io.limits import check_decoded_size
from medrefine.io.sniff import sniff_format

logger = logging.getLogger(__name__)


def read_mask(path: str | Path, like: LoadedImage | None = None) -> np.ndarray:
    """Read a mask file as a uint8 label map, (H, W) or (D, H, W); see ``load_mask``."""
    return load_mask(path, like=like).mask


def load_mask(path: str | Path, like: LoadedImage | None = None) -> LoadedMask:
    """Read a mask file with its spacing and meta.

    Args:
        path: PNG/BMP/TIFF/JPEG mask, NIfTI label volume or DICOM-SEG file.
        like: the image the mask belongs to. For DICOM-SEG, frames are then matched to its
            slices by SOP Instance UID; for every format the mask's shape is checked against
            ``like.spatial_shape``.

    Returns:
        LoadedMask; ``mask`` is uint8 without a channel axis.

    Raises:
        InputError: unreadable file, colour mask, fractional, negative or > 255 values.
    """
    from medrefine.io.dicom import SEG_SOP_CLASS, open_dicom, sop_class_uid
    from medrefine.io.dicom_seg import read_dicom_seg
    from medrefine.io.nifti import read_nifti
    from medrefine.io.raster import read_raster

    path = Path(path)
    with reading(path):
        fmt = sniff_format(path)
        if fmt == "dicom":
            ds = open_dicom(path, stop_before_pixels=True)
            if sop_class_uid(ds) != SEG_SOP_CLASS:
                raise UnsupportedFormatError(
                    f"{path}: DICOM {ds.get('Modality', '?')} object is not a DICOM-SEG; a "
                    "DICOM mask must be a Segmentation Storage object (RTSTRUCT contours are "
                    "not supported)"
                )
            loaded = read_dicom_seg(path, like=like)
        elif fmt == "dicom-folder":
            raise UnsupportedFormatError(
                f"{path}: a folder is not a mask; give a DICOM-SEG, NIfTI or PNG mask file"
            )
        elif fmt == "nifti":
            image = read_nifti(path)
            loaded = _to_labels(image, path)
        else:
            image = _read_palette_indices(path) if fmt == "png" else None
            if image is None:
                image = read_raster(path, fmt=fmt)
            loaded = _to_labels(image, path)
            if fmt == "jpeg":
                logger.warning("%s: JPEG masks are lossy; labels may be blurred at the edges", path)
    if like is not None and loaded.mask.shape != like.spatial_shape:
        raise InputError(
            f"{path}: mask shape {loaded.mask.shape} differs from the image's "
            f"{like.spatial_shape}; give the mask made for this image"
        )
    return loaded


def _read_palette_indices(path: Path) -> LoadedImage | None:
    """Palette PNGs as their indices (label values), or None for other PNG modes."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            if img.mode != "P":
                return None
            width, height = img.size
            check_size(path, (height, width), MAX_PIXELS_2D)
            check_decoded_size(path, (height, width), 1, "pixels")  # before decoding
            indices = np.asarray(img)
    except Image.DecompressionBombError as err:
        raise InputError(f"{path}: image is too large ({err}); downsample it first") from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise InputError(
            f"{path}: cannot decode the PNG mask ({err}); the file is probably truncated or corrupt"
        ) from err
    meta = {"format": "png", "source_dtype": "uint8", "modality": "OT", "mode": "P"}
    return LoadedImage(indices[None].astype(np.float32), None, meta, path)


def _to_labels(image: LoadedImage, path: Path) -> LoadedMask:
    """(C, ...) float image -> uint8 label map without channel axis."""
    array = image.array
    if array.shape[0] in (2, 4):
        # Some annotation tools draw the mask in the alpha channel alone (colour all 0): then
        # the alpha is the mask; otherwise alpha is only transparency and is dropped.
        colour, alpha = array[:-1], array[-1:]
        drawn_in_alpha = not colour.any() and alpha.any() and alpha.min() != alpha.max()
        array = alpha if drawn_in_alpha else colour
    if array.shape[0] == 3:
        if not (np.array_equal(array[0], array[1]) and np.array_equal(array[1], array[2])):
            raise UnsupportedFormatError(
                f"{path}: colour mask (R, G, B differ); save masks as 8-bit gray label images "
                "(0 background, 1..K or 255 foreground)"
            )
        array = array[:1]
    if array.shape[0] != 1:
        raise InputError(f"{path}: mask has {array.shape[0]} channels; expected one")
    values = array[0]
    fmt = image.meta.get("format")
    if fmt == "jpeg":  # lossy: the only safe reading is a threshold
        labels = (values >= 128).astype(np.uint8)
    else:
        labels = _integer_labels(values, path)
    meta = {
        "format": fmt,
        "source_dtype": image.meta.get("source_dtype"),
        "modality": "OT",
        "labels": [int(v) for v in np.unique(labels) if v],
    }
    for key in ("affine", "header", "nifti_shape", "ornt_transform", "slice"):
        if key in image.meta:
            meta[key] = image.meta[key]
    return LoadedMask(labels, image.spacing, meta, path)


def _integer_labels(values: np.ndarray, path: Path) -> np.ndarray:
    if values.size and not np.array_equal(values, np.round(values)):
        raise InputError(
            f"{path}: mask has fractional values (e.g. probabilities); threshold it "
            "to integer labels first"
        )
    lo, hi = float(values.min()), float(values.max())
    if lo < 0:
        raise InputError(f"{path}: mask has negative values (min {lo:g}); labels must be 0..255")
    present = np.unique(values)
    if len(present) <= 2 and hi in (255.0, 65535.0):
        return (values > 0).astype(np.uint8)  # binary 0/255 or 0/65535 -> 0/1
    if hi > 255:
        raise InputError(
            f"{path}: mask has label values up to {hi:g}; medrefine label maps hold "
            "0..255, relabel it"
        )
    return values.astype(np.uint8)
