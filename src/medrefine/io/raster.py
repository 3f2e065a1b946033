"""PNG, JPEG, BMP and TIFF: 8/16-bit, float, gray, RGB, RGBA and palette images.

Pillow decodes PNG/JPEG/BMP except 16-bit colour PNG (Pillow would cut it to 8 bits), which
OpenCV reads instead. tifffile reads TIFF, including multi-page stacks and float data.
"""

from __future__ import annotations

import logging
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from medrefine.errors import InputError, UnsupportedFormatError
from medrefine.io.base import MAX_PIXELS_2D, LoadedImage, check_size, finite_float32
from medrefine.io.limits import check_decoded_size
from medrefine.io.sniff import RASTER_SUFFIXES

logger = logging.getLogger(__name__)

RASTER_FORMATS = ("png", "jpeg", "bmp", "tiff")
# Pillow modes we hand over as they are (after np.asarray) and the ones we convert.
_KEEP_MODES = ("1", "L", "LA", "RGB", "RGBA", "I;16", "I;16B", "I;16L", "I", "F")
_TO_RGB_MODES = ("CMYK", "YCbCr", "LAB", "HSV", "RGBX")
# Pillow's own decompression-bomb limit, aligned with ours (we check the header size first).
Image.MAX_IMAGE_PIXELS = MAX_PIXELS_2D


def read_raster(path: Path, *, fmt: str | None = None, tiff_pages: str = "stack") -> LoadedImage:
    """Read a PNG/JPEG/BMP/TIFF file into a channel-first float32 array in raw units.

    Args:
        path: the file.
        fmt: ``png``, ``jpeg``, ``bmp`` or ``tiff`` if already known from the content;
            otherwise taken from the suffix.
        tiff_pages: for a multi-page TIFF, ``"stack"`` returns (C, D, H, W), ``"error"`` refuses.

    Returns:
        LoadedImage with array (C, H, W) (C = 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA) or
        (C, D, H, W) for a TIFF stack; values as stored (0..255, 0..65535, float).
        meta: ``format``, ``source_dtype``, ``modality`` ("OT"), ``mode`` (Pillow mode or
        ``tiff``), ``frames`` (pages; 1 for 2D).
    """
    path = Path(path)
    kind = fmt or RASTER_SUFFIXES.get(path.suffix.lower())
    if kind == "tiff":
        return _read_tiff(path, tiff_pages)
    if kind == "png" and _png_is_16bit_colour(path):
        return _read_png16_colour(path)
    return _read_pillow(path, kind)


def _read_pillow(path: Path, kind: str | None) -> LoadedImage:
    what = kind.upper() if kind else "image"
    try:
        with warnings.catch_warnings():
            # Between 1x and 2x Pillow's limit it only warns; our own header check raises.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            array, fmt, mode, exif_orientation, dpi = _decode_pillow(path, kind)
    except InputError:
        raise
    except UnidentifiedImageError as err:
        raise InputError(
            f"{path}: not a readable {what} file (unrecognised content); check "
            "that it is really an image"
        ) from err
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as err:
        raise InputError(
            f"{path}: cannot decode the {what} file ({err}); the file is "
            "probably truncated or corrupt, re-export it"
        ) from err
    except Image.DecompressionBombError as err:
        raise InputError(f"{path}: image is too large ({err}); downsample it first") from err
    if exif_orientation not in (None, 1):
        # Masks are drawn on the stored pixels, so we do not rotate; say so once.
        logger.warning(
            "%s: EXIF orientation %s ignored; pixels are used as stored", path, exif_orientation
        )
    source_dtype = "bool" if mode == "1" else str(array.dtype)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.ndim == 2:
        array = array[None]
    elif array.ndim == 3:
        array = np.moveaxis(array, -1, 0)
    else:
        raise InputError(
            f"{path}: unexpected decoded shape {array.shape}; re-save the image "
            "as 8-bit gray or RGB"
        )
    spacing = None
    if dpi and dpi[0] and dpi[1] and float(dpi[0]) > 1 and float(dpi[1]) > 1:
        spacing = (25.4 / float(dpi[1]), 25.4 / float(dpi[0]))
    meta = {
        "format": fmt,
        "source_dtype": source_dtype,
        "modality": "OT",
        "mode": mode,
        "frames": 1,
    }
    return LoadedImage(finite_float32(array, path), spacing, meta, path)


def _decode_pillow(path: Path, kind: str | None):
    """(array, format, original mode, EXIF orientation, dpi) of a Pillow-readable file."""
    with Image.open(path) as img:
        width, height = img.size
        check_size(path, (height, width), MAX_PIXELS_2D)  # header only, before decoding
        bands, per_band = _decoded_bands(img)
        check_decoded_size(path, (height, width, bands), per_band, "pixel values")
        img.load()
        fmt = (img.format or kind or "raster").lower()
        mode = img.mode
        exif_orientation = _exif_orientation(img)
        converted = _convert_mode(img, path)
        return np.asarray(converted), fmt, mode, exif_orientation, converted.info.get("dpi")


def _decoded_bands(img: Image.Image) -> tuple[int, int]:
    """(bands after ``_convert_mode``, bytes per band) from the header, for the size check."""
    bands = len(img.getbands())
    if img.mode in ("P", "PA"):
        bands = 4  # a palette may expand to RGBA
    elif img.mode in _TO_RGB_MODES:
        bands = max(bands, 3)
    per_band = 4 if img.mode in ("I", "F") else 2 if img.mode.startswith("I;16") else 1
    return bands, per_band


def _convert_mode(img: Image.Image, path: Path) -> Image.Image:
    mode = img.mode
    if mode == "P" or mode == "PA":
        # Palette: expand to the colours it stands for; a gray palette stays one channel.
        has_alpha = mode == "PA" or "transparency" in img.info
        if not has_alpha and _palette_is_gray(img):
            return img.convert("L")
        return img.convert("RGBA" if has_alpha else "RGB")
    if mode in _TO_RGB_MODES:
        return img.convert("RGB")
    if mode in _KEEP_MODES:
        return img
    raise UnsupportedFormatError(
        f"{path}: Pillow image mode {mode!r} is not supported; save it as 8/16-bit gray or RGB(A)"
    )


def _palette_is_gray(img: Image.Image) -> bool:
    palette = img.getpalette()
    if not palette:
        return False
    rgb = np.asarray(palette, dtype=np.int32).reshape(-1, 3)
    used = np.unique(np.asarray(img))
    used = used[used < len(rgb)]
    return bool(np.all(rgb[used, 0] == rgb[used, 1]) and np.all(rgb[used, 1] == rgb[used, 2]))


def _exif_orientation(img: Image.Image) -> int | None:
    try:
        return img.getexif().get(0x0112)
    except Exception:  # a damaged EXIF block must not stop reading the pixels
        return None


def _png_is_16bit_colour(path: Path) -> bool:
    """True for 16-bit RGB/RGBA PNGs (IHDR bit depth 16, colour type 2 or 6)."""
    with open(path, "rb") as fh:
        head = fh.read(29)
    if len(head) < 29 or head[12:16] != b"IHDR":
        return False
    return head[24] == 16 and head[25] in (2, 6)


def _read_png16_colour(path: Path) -> LoadedImage:
    import cv2

    with open(path, "rb") as fh:
        head = fh.read(24)
    width, height = struct.unpack(">II", head[16:24])
    check_size(path, (height, width), MAX_PIXELS_2D)
    check_decoded_size(path, (height, width, 4), 2, "pixel values")
    buffer = np.fromfile(path, dtype=np.uint8)
    array = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    if array is None or array.ndim != 3:
        raise InputError(
            f"{path}: cannot decode the 16-bit PNG file; the file is probably "
            "truncated or corrupt, re-export it"
        )
    array = array[..., [2, 1, 0, 3][: array.shape[2]]]  # OpenCV gives BGR(A)
    mode = "RGBA;16" if array.shape[2] == 4 else "RGB;16"
    meta = {
        "format": "png",
        "source_dtype": str(array.dtype),
        "modality": "OT",
        "mode": mode,
        "frames": 1,
    }
    return LoadedImage(finite_float32(np.moveaxis(array, -1, 0), path), None, meta, path)


def _read_tiff(path: Path, tiff_pages: str) -> LoadedImage:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = _pick_series(tif, path)
            check_size(path, series.shape, 4 * MAX_PIXELS_2D)
            check_decoded_size(path, series.shape, _itemsize(series), "values")
            array = series.asarray()
            axes = series.axes
            page = tif.pages[0]
            photometric = str(page.photometric)
            colormap = page.colormap
            spacing = _tiff_spacing(page)
    except InputError:
        raise
    except Exception as err:  # tifffile raises many types for corrupt files
        raise InputError(
            f"{path}: cannot read TIFF ({err}); the file is probably truncated or "
            "corrupt, re-export it"
        ) from err
    source_dtype = str(array.dtype)
    array = _tiff_to_channel_first(array, axes, path)
    if photometric.endswith("PALETTE") and colormap is not None and array.shape[0] == 1:
        array = _apply_colormap(array[0], colormap)
    elif photometric.endswith("MINISWHITE"):
        info = np.iinfo(array.dtype) if array.dtype.kind in "ui" else None
        array = (info.max - array) if info else (array.max() - array)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    frames = int(array.shape[1]) if array.ndim == 4 else 1
    if array.ndim == 4 and tiff_pages == "error":
        raise InputError(
            f"{path}: multi-page TIFF ({frames} pages) where one 2D image was "
            "expected; split the pages or read it as a stack"
        )
    if array.ndim == 4 and spacing is not None:
        spacing = (1.0, *spacing)  # page spacing is unknown; 1 keeps the in-plane values usable
    meta = {
        "format": "tiff",
        "source_dtype": source_dtype,
        "modality": "OT",
        "mode": "tiff",
        "frames": frames,
    }
    return LoadedImage(finite_float32(array, path), spacing, meta, path)


def _pick_series(tif, path: Path):
    """The first series, or all single-page series stacked when pages were written one by one."""
    series = tif.series
    if not series:
        raise InputError(f"{path}: TIFF has no image data; check the file")
    first = series[0]
    same = [s for s in series if s.shape == first.shape and s.dtype == first.dtype]
    if len(series) > 1 and len(same) == len(series) and len(first.pages) == 1:
        check_decoded_size(path, (len(series), *first.shape), _itemsize(first), "values")
        return _StackedPages([s.asarray() for s in series], "I" + first.axes)
    return first


def _itemsize(series) -> int:
    try:
        return int(np.dtype(series.dtype).itemsize)
    except (TypeError, ValueError, AttributeError):
        return 8  # unknown: assume the widest


class _StackedPages:
    """Looks like a tifffile series for a stack of pages stored as separate series."""

    def __init__(self, pages: list[np.ndarray], axes: str) -> None:
        self.pages = pages
        self.axes = axes
        self.shape = (len(pages), *pages[0].shape)
        self.dtype = pages[0].dtype

    def asarray(self) -> np.ndarray:
        return np.stack(self.pages)


def _tiff_to_channel_first(array: np.ndarray, axes: str, path: Path) -> np.ndarray:
    """Normalise tifffile axes (Y, X, samples S/C, pages I/Q/Z/T...) to (C, [D,] H, W)."""
    if "Y" not in axes or "X" not in axes:
        raise InputError(
            f"{path}: TIFF with axes {axes!r} has no Y/X plane; re-save it as an "
            "ordinary image or stack"
        )
    # Drop size-1 axes other than Y/X so e.g. 'TZCYX' ImageJ files with T=C=1 work.
    keep = [i for i, a in enumerate(axes) if a in "YX" or array.shape[i] > 1]
    array = array.reshape([array.shape[i] for i in keep])
    axes = "".join(axes[i] for i in keep)
    channel_axes = [i for i, a in enumerate(axes) if a in "SC"]
    page_axes = [i for i, a in enumerate(axes) if a not in "SCYX"]
    if len(channel_axes) > 1 or len(page_axes) > 1:
        raise InputError(
            f"{path}: TIFF with axes {axes!r} and shape {array.shape} has more "
            "than one channel or page axis; split it into single stacks"
        )
    order = channel_axes + page_axes + [axes.index("Y"), axes.index("X")]
    array = np.transpose(array, order)
    if not channel_axes:
        array = array[None]
    return array


def _apply_colormap(indices: np.ndarray, colormap: np.ndarray) -> np.ndarray:
    """TIFF palette (3, 2**bits) uint16 -> (3, ...) RGB, or (1, ...) when the palette is gray."""
    rgb = colormap[:, indices]  # (3, [D,] H, W)
    if rgb.dtype == np.uint16 and int(colormap.max()) > 255:
        rgb = (rgb // 257).astype(np.uint8)
    if np.array_equal(rgb[0], rgb[1]) and np.array_equal(rgb[1], rgb[2]):
        return rgb[:1]
    return rgb


def _tiff_spacing(page) -> tuple[float, float] | None:
    """(row, col) spacing in mm from XResolution/YResolution when the unit is inch or cm."""
    try:
        unit = int(page.tags["ResolutionUnit"].value) if "ResolutionUnit" in page.tags else 2
        xres = page.tags["XResolution"].value if "XResolution" in page.tags else None
        yres = page.tags["YResolution"].value if "YResolution" in page.tags else None
    except (KeyError, TypeError, ValueError):
        return None
    if xres is None or yres is None or unit not in (2, 3):
        return None
    per_mm = 25.4 if unit == 2 else 10.0
    x = xres[0] / xres[1] if isinstance(xres, tuple) and xres[1] else float(xres)
    y = yres[0] / yres[1] if isinstance(yres, tuple) and yres[1] else float(yres)
    if x <= 1 or y <= 1:  # 1 dpi / 72 dpi defaults carry no physical meaning below 1
        return None
    return (per_mm / y, per_mm / x)
