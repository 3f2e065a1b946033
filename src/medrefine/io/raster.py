"""PNG, JPEG, BMP and TIFF: 8/16-bit, float, gray, RGB, RGBA and palette images."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from medrefine.errors import InputError, UnsupportedFormatError
from medrefine.io.base import MAX_PIXELS_2D, LoadedImage

RASTER_SUFFIXES = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".bmp": "bmp",
                   ".tif": "tiff", ".tiff": "tiff"}


def read_raster(path: Path, *, tiff_pages: str = "stack") -> LoadedImage:
    """Read a PNG/JPEG/BMP/TIFF file into a channel-first float32 array in raw units.

    Args:
        path: the file.
        tiff_pages: for a multi-page TIFF, ``"stack"`` returns (C, D, H, W), ``"error"`` refuses.

    Returns:
        LoadedImage with array (C, H, W) (C = 1 gray, 3 RGB, 4 RGBA) or (C, D, H, W).
    """
    kind = RASTER_SUFFIXES.get(path.suffix.lower())
    if kind == "tiff":
        return _read_tiff(path, tiff_pages)
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS_2D
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                fmt = (img.format or kind or "raster").lower()
                mode = img.mode
                if mode == "P":  # palette: expand to the colours it stands for
                    img = img.convert("RGBA" if "transparency" in img.info else "RGB")
                elif mode in ("1", "L", "LA", "RGB", "RGBA"):
                    pass
                elif mode == "CMYK" or mode == "YCbCr":
                    img = img.convert("RGB")
                elif mode.startswith("I;16") or mode in ("I", "F"):
                    pass
                else:
                    raise UnsupportedFormatError(
                        f"{path}: PIL image mode {mode!r} is not supported; "
                        "save it as 8/16-bit gray or RGB(A)"
                    )
                array = np.asarray(img)
                dpi = img.info.get("dpi")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise InputError(
            f"{path}: image is too large ({err}); downsample it below "
            f"{MAX_PIXELS_2D} pixels first"
        ) from err
    except UnidentifiedImageError as err:
        raise InputError(f"{path}: not a readable {kind or 'image'} file (unrecognised content)")\
            from err
    except (OSError, SyntaxError, ValueError) as err:
        raise InputError(f"{path}: cannot decode {kind or 'image'} file ({err}); "
                         "the file is probably truncated or corrupt") from err
    source_dtype = str(array.dtype)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.ndim == 2:
        array = array[None]
    elif array.ndim == 3:
        array = np.moveaxis(array, -1, 0)
    else:
        raise InputError(f"{path}: unexpected decoded shape {array.shape}")
    spacing = None
    if dpi and dpi[0] and dpi[1] and float(dpi[0]) > 1 and float(dpi[1]) > 1:
        spacing = (25.4 / float(dpi[1]), 25.4 / float(dpi[0]))
    meta = {"format": fmt, "source_dtype": source_dtype, "modality": "OT", "mode": mode}
    return LoadedImage(_finite_float32(array, path), spacing, meta, path)


def _read_tiff(path: Path, tiff_pages: str) -> LoadedImage:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape = series.shape
            if int(np.prod(shape)) > 4 * MAX_PIXELS_2D:
                raise InputError(f"{path}: TIFF of shape {shape} is too large to load")
            array = series.asarray()
            axes = series.axes
            photometric = tif.pages[0].photometric
    except InputError:
        raise
    except Exception as err:  # tifffile raises many types for corrupt files
        raise InputError(f"{path}: cannot read TIFF ({err}); the file is probably corrupt") from err
    source_dtype = str(array.dtype)
    # Normalise axes to (C, [D,] H, W). tifffile names samples 'S', pages 'I'/'Q'/'Z'.
    if "S" in axes:
        array = np.moveaxis(array, axes.index("S"), 0)
        axes = "S" + axes.replace("S", "")
    else:
        array = array[None]
        axes = "S" + axes
    if array.ndim == 4:
        if tiff_pages == "error":
            raise InputError(f"{path}: multi-page TIFF ({array.shape[1]} pages) where one 2D "
                             "image was expected; split the pages or read it as a stack")
    elif array.ndim != 3:
        raise InputError(f"{path}: TIFF with axes {axes!r} and shape {array.shape} is not a 2D "
                         "image or a stack of pages")
    if str(photometric).endswith("MINISWHITE"):
        info = np.iinfo(array.dtype) if array.dtype.kind in "ui" else None
        array = (info.max - array) if info else (array.max() - array)
    meta = {"format": "tiff", "source_dtype": source_dtype, "modality": "OT"}
    return LoadedImage(_finite_float32(array, path), None, meta, path)


def _finite_float32(array: np.ndarray, path: Path) -> np.ndarray:
    if array.size == 0 or 0 in array.shape:
        raise InputError(f"{path}: image is empty (shape {array.shape})")
    out = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(out).all():
        raise InputError(f"{path}: image contains NaN or infinite values; clean it before "
                         "segmenting")
    return out
