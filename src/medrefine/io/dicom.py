"""DICOM image files: single-frame, multi-frame (enhanced CT/MR), colour and compressed.

Values come back in the units of the modality LUT (CT in HU). MONOCHROME1 images are inverted
so that bright means dense everywhere (the stored window is inverted with them). Series folders
are read in ``dicom_series.py``, DICOM-SEG in ``dicom_seg.py``.

Array layout: (C, H, W) for one frame, (C, D, H, W) for a multi-frame file, where the D axis
runs along the slice normal (row direction x column direction of ImageOrientationPatient),
i.e. frames are sorted by ImagePositionPatient projected on the normal; ``meta["frame_order"]``
gives the stored frame index of each D slice so writers can put results back.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from medrefine.errors import InputError, UnsupportedFormatError
from medrefine.io import dicom_geometry as geometry
from medrefine.io.base import MAX_VOXELS, LoadedImage, check_size, finite_float32
from medrefine.io.limits import check_decoded_size

logger = logging.getLogger(__name__)

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


@dataclass
class DecodedFrames:
    """Pixels and geometry of one DICOM instance, frames in stored order.

    array: float32 (C, F, H, W) in modality-LUT units; positions: (F, 3) or None.
    """

    array: np.ndarray
    source_dtype: str
    photometric: str
    inverted: bool
    orientation: np.ndarray | None  # (6,) row then column direction cosines
    positions: np.ndarray | None  # (F, 3) ImagePositionPatient per frame
    pixel_spacing: tuple[float, float] | None  # (row spacing, column spacing) in mm
    slice_spacing: float | None  # SpacingBetweenSlices, else SliceThickness
    window: tuple[float, float] | None  # (center, width) in output units
    rescale: tuple[float, float] | None  # (slope, intercept) of the first frame


def read_dicom(path: Path) -> LoadedImage:
    """Read one DICOM image file (any SOP class with pixel data except SEG/RTSTRUCT).

    Returns:
        LoadedImage with array (C, H, W) or, for multi-frame files, (C, D, H, W); C is 1 for
        gray and 3 for colour (RGB). See ``dicom_meta`` for the meta keys.
    """
    path = Path(path)
    ds = open_dicom(path)
    refuse_non_image(ds, path)
    frames = decode_frames(ds, path)
    order = geometry.frame_order(frames.array.shape[1], frames.positions, frames.orientation, path)
    array = frames.array[:, order]  # (C, D, H, W)
    positions = frames.positions[order] if frames.positions is not None else None
    spacing = geometry.volume_spacing(frames, positions, path)
    if array.shape[1] == 1:
        array = array[:, 0]
        spacing = spacing[1:] if spacing is not None else None
    meta = dicom_meta([ds], frames, positions)
    meta["number_of_frames"] = int(frames.array.shape[1])
    meta["frame_order"] = [int(i) for i in order]
    return LoadedImage(finite_float32(array, path), spacing, meta, path)


def open_dicom(path: Path, *, stop_before_pixels: bool = False) -> Dataset:
    """``pydicom.dcmread`` with every failure turned into ``InputError`` naming the file.

    Files without the 128-byte preamble are read with ``force=True`` and then checked to hold
    at least a SOP Class UID, a modality or pixel data, so non-DICOM files are refused.
    """
    try:
        forced = False
        try:
            with _quiet(path):
                ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
        except InvalidDicomError:
            with _quiet(path):
                ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=True)
            forced = True
        with _quiet(path):
            _drop_undecodable(ds, path)
            if getattr(ds, "file_meta", None) is not None:
                _drop_undecodable(ds.file_meta, path)
        if forced and not any(k in ds for k in ("SOPClassUID", "Modality", *_PIXEL_KEYWORDS)):
            raise InputError(
                f"{path}: not a DICOM file (no SOP Class, modality or pixel "
                "data found); check that it is really DICOM"
            )
        return ds
    except InputError:
        raise
    except Exception as err:  # pydicom raises many types for damaged files
        raise InputError(
            f"{path}: cannot parse DICOM ({type(err).__name__}: {err}); the file "
            "is probably truncated or not DICOM"
        ) from err


def _drop_undecodable(ds: Dataset, path: Path, depth: int = 0) -> None:
    """Decode every element now, inside ``open_dicom``'s guard, and drop those that cannot be
    decoded (an unknown VR, a damaged value): pydicom decodes elements lazily, so otherwise a
    damaged private tag fails wherever it is first touched, long after the file was opened."""
    for tag in list(ds.keys()):
        try:
            elem = ds[tag]
            if elem.VR == "SQ" and depth < 16:
                for item in elem.value:
                    _drop_undecodable(item, path, depth + 1)
        except Exception as err:  # any type: it is the library's decoding that failed
            logger.debug("%s: element %s dropped (%s: %s)", path, tag, type(err).__name__, err)
            with contextlib.suppress(Exception):
                del ds[tag]


def header_int(ds: Dataset, keyword: str, default: int, path: Path) -> int:
    """An integer header value; a damaged one (text, unknown VR, a list) is an ``InputError``."""
    try:
        value = ds.get(keyword, default)
        if value is None or value == "":
            return default
        return int(value)
    except Exception as err:  # pydicom decodes elements lazily: any type can come out here
        raise InputError(
            f"{path}: DICOM {keyword} is not a number ({type(err).__name__}); the header is damaged"
        ) from err


def sop_class_uid(ds: Dataset) -> str:
    uid = ds.get("SOPClassUID") or ds.get("file_meta", Dataset()).get("MediaStorageSOPClassUID")
    return str(uid or "")


def refuse_non_image(ds: Dataset, path: Path) -> None:
    """Raise ``UnsupportedFormatError`` for DICOM objects that are not images."""
    sop = sop_class_uid(ds)
    modality = str(ds.get("Modality", ""))
    if sop == RTSTRUCT_SOP_CLASS or modality == "RTSTRUCT":
        raise UnsupportedFormatError(
            f"{path}: RTSTRUCT holds contours, not pixels; convert it to a DICOM-SEG or a label "
            "image (e.g. with rt-utils or plastimatch) and give the CT/MR images it refers to"
        )
    if sop == SEG_SOP_CLASS or modality == "SEG":
        raise UnsupportedFormatError(
            f"{path}: is a DICOM-SEG (a segmentation, not an image); read it with "
            "medrefine.io.read_mask or give the image it segments"
        )
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        name = UID(sop).name if sop else "unknown SOP class"
        raise UnsupportedFormatError(
            f"{path}: DICOM object ({name}, modality {modality or '?'}) has no pixel data (or "
            "the file is cut off before it); give a complete image file such as CT, MR, CR or US"
        )


def decode_frames(ds: Dataset, path: Path) -> DecodedFrames:
    """Decode pixels (any transfer syntax pydicom has a plugin for) and apply the modality LUT."""
    rows, cols = header_int(ds, "Rows", 0, path), header_int(ds, "Columns", 0, path)
    n_frames = header_int(ds, "NumberOfFrames", 1, path) or 1
    samples = header_int(ds, "SamplesPerPixel", 1, path) or 1
    if rows <= 0 or cols <= 0 or n_frames < 0 or samples not in (1, 3):
        raise InputError(
            f"{path}: DICOM header gives {n_frames} frame(s) of {rows}x{cols} pixels with "
            f"{samples} sample(s) each; expected positive sizes and 1 or 3 samples (damaged header)"
        )
    check_size(path, (n_frames, rows, cols, samples), MAX_VOXELS)
    bits = header_int(ds, "BitsAllocated", 16, path)
    check_decoded_size(path, (n_frames, rows, cols, samples), max(bits, 8) / 8, "pixel values")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    stored = _pixel_array(ds, path)
    source_dtype = str(stored.dtype)
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        try:
            stored = apply_color_lut(stored, ds)
        except Exception as err:  # missing or malformed palette tables
            raise InputError(
                f"{path}: cannot apply the palette colour table ({err}); the "
                "DICOM header is incomplete"
            ) from err
        samples = 3
    # pydicom gives (H, W), (F, H, W), (H, W, 3) or (F, H, W, 3); make it (C, F, H, W).
    if stored.size != n_frames * rows * cols * samples:
        raise InputError(
            f"{path}: decoded {stored.size:,} pixel values where the header promises "
            f"{n_frames} frame(s) x {rows} x {cols} x {samples}; the header is inconsistent"
        )
    if samples == 1:
        stored = stored.reshape(n_frames, rows, cols)[None]
    else:
        stored = np.moveaxis(stored.reshape(n_frames, rows, cols, samples), -1, 0)
    try:
        array, rescale = _apply_modality(ds, stored, samples)
    except (ValueError, TypeError, IndexError) as err:
        raise InputError(
            f"{path}: cannot apply the modality LUT / rescale ({err}); the DICOM "
            "header values are malformed"
        ) from err
    window = _window(ds)
    inverted = False
    if photometric == "MONOCHROME1":
        array, window = _invert(ds, array, window, rescale)
        inverted = True
    return DecodedFrames(
        array=array,
        source_dtype=source_dtype,
        photometric=photometric,
        inverted=inverted,
        orientation=geometry.orientation(ds),
        positions=geometry.positions(ds, n_frames),
        pixel_spacing=geometry.pixel_spacing(ds),
        slice_spacing=geometry.slice_spacing(ds),
        window=window,
        rescale=rescale,
    )


def dicom_meta(
    datasets: list[Dataset], frames: DecodedFrames, positions: np.ndarray | None
) -> dict[str, Any]:
    """Meta shared by single files and series; datasets in array (D) order, pixels dropped."""
    first = datasets[0]
    sop = sop_class_uid(first)
    ts = first.get("file_meta", Dataset()).get("TransferSyntaxUID")
    for ds in datasets:  # keep headers for highdicom, not a second copy of the pixels
        for keyword in _PIXEL_KEYWORDS:
            if keyword in ds:
                delattr(ds, keyword)
    return {
        "format": "dicom",
        "source_dtype": frames.source_dtype,
        "modality": str(first.get("Modality", "OT") or "OT"),
        "photometric": frames.photometric,
        "inverted": frames.inverted,
        "transfer_syntax": UID(ts).name if ts else None,
        "sop_class_uid": sop,
        "sop_class": UID(sop).name if sop else None,
        "study_instance_uid": str(first.get("StudyInstanceUID", "")) or None,
        "series_instance_uid": str(first.get("SeriesInstanceUID", "")) or None,
        "sop_instance_uids": [str(ds.get("SOPInstanceUID", "")) for ds in datasets],
        "frame_of_reference_uid": str(first.get("FrameOfReferenceUID", "")) or None,
        "series_description": str(first.get("SeriesDescription", "")) or None,
        "window_center": frames.window[0] if frames.window else None,
        "window_width": frames.window[1] if frames.window else None,
        "rescale_slope": frames.rescale[0] if frames.rescale else None,
        "rescale_intercept": frames.rescale[1] if frames.rescale else None,
        "image_orientation": (
            frames.orientation.tolist() if frames.orientation is not None else None
        ),
        "image_positions": positions.tolist() if positions is not None else None,
        "source_datasets": datasets,
    }


# ---------------------------------------------------------------------------- decoding helpers
@contextlib.contextmanager
def _quiet(path: Path) -> Iterator[None]:
    """Turn pydicom's warnings and log records about odd files into debug log lines (the CLI
    stays one line): a decoder failure is logged by pydicom with its traceback, once per plugin
    tried, before the exception that we turn into our own message."""
    with warnings.catch_warnings(record=True) as caught, _pydicom_logs_to_debug():
        warnings.simplefilter("always")
        yield
    for warning in caught:
        logger.debug("%s: %s", path, warning.message)


class _RelayToDebug(logging.Handler):
    """Hands a record of the "pydicom" logger on as a debug line of ours, without traceback."""

    def emit(self, record: logging.LogRecord) -> None:
        logger.debug("pydicom (%s): %s", record.levelname.lower(), record.getMessage())


_PYDICOM_LOGGER = logging.getLogger("pydicom")
_RELAY = _RelayToDebug()
_relay_lock = threading.Lock()
_relay_users = 0  # nested or concurrent ``_quiet`` blocks; the last one out restores
_saved_propagate = True


@contextlib.contextmanager
def _pydicom_logs_to_debug() -> Iterator[None]:
    """While inside, records of the "pydicom" logger stop at it (handlers that someone put on
    that logger itself, e.g. ``pydicom.config.debug()``, still get them) and reach the root
    handlers only as our debug lines. Other loggers are untouched."""
    global _relay_users, _saved_propagate
    with _relay_lock:
        if _relay_users == 0:
            _saved_propagate = _PYDICOM_LOGGER.propagate
            _PYDICOM_LOGGER.propagate = False
            _PYDICOM_LOGGER.addHandler(_RELAY)
        _relay_users += 1
    try:
        yield
    finally:
        with _relay_lock:
            _relay_users -= 1
            if _relay_users == 0:
                _PYDICOM_LOGGER.removeHandler(_RELAY)
                _PYDICOM_LOGGER.propagate = _saved_propagate


def _pixel_array(ds: Dataset, path: Path) -> np.ndarray:
    ts = ds.get("file_meta", Dataset()).get("TransferSyntaxUID")
    ts_name = UID(ts).name if ts else "unknown transfer syntax"
    try:
        with _quiet(path):
            return ds.pixel_array
    except (NotImplementedError, RuntimeError) as err:
        missing = _missing_decoder(ts)
        if missing is not None:
            advice = (
                "decompress the file (gdcmconv --raw)"
                if missing.startswith("pydicom has no decoder")
                else "install a decoder (pylibjpeg-libjpeg, pylibjpeg-openjpeg, pylibjpeg-rle "
                "or python-gdcm) or decompress the file (gdcmconv --raw)"
            )
            raise UnsupportedFormatError(
                f"{path}: cannot decode {ts_name} pixel data: {missing}; {advice}"
            ) from err
        if ts and UID(ts).is_compressed:
            raise InputError(
                f"{path}: corrupt pixel data ({ts_name} payload could not be decoded: "
                f"{_plugin_failures(err)}); re-export the image from its source"
            ) from err
        raise InputError(
            f"{path}: cannot decode {ts_name} pixel data ({err}); the file is "
            "probably truncated or corrupt"
        ) from err
    except Exception as err:
        raise InputError(
            f"{path}: cannot decode {ts_name} pixel data ({type(err).__name__}: "
            f"{err}); the file is probably truncated or corrupt"
        ) from err


def _missing_decoder(ts: str | None) -> str | None:
    """Why no pydicom decoder plugin can decode ``ts`` (None when one is available, or when the
    transfer syntax is unknown, so that a failure is not blamed on a missing package)."""
    if not ts:
        return None
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        return "pydicom has no decoder for this transfer syntax"
    except Exception:  # a malformed UID: nothing to say about plugins
        return None
    if decoder.is_available:
        return None
    missing = "; ".join(decoder.missing_dependencies)
    return f"no decoder plugin is installed ({missing})" if missing else "no decoder plugin"


def _plugin_failures(err: Exception) -> str:
    """pydicom's "exceptions were raised by all available plugins" message, shortened to
    ``plugin: reason; ...`` (object reprs such as ``<_io.BytesIO object at 0x..>`` dropped)."""
    lines = [line.strip() for line in str(err).splitlines()]
    reasons = [line for line in lines[1:] if line] or lines[:1]
    text = "; ".join(re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", r) for r in reasons)
    return text if len(text) <= 200 else text[:197] + "..."


def _apply_modality(
    ds: Dataset, stored: np.ndarray, samples: int
) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Modality LUT / rescale per frame (enhanced files may rescale each frame differently)."""
    if samples != 1:
        return stored.astype(np.float32), None
    n_frames = stored.shape[1]
    if "ModalityLUTSequence" in ds and "PerFrameFunctionalGroupsSequence" not in ds:
        from pydicom.pixels import apply_modality_lut

        return apply_modality_lut(stored, ds).astype(np.float32), None
    out = np.empty(stored.shape, np.float32)
    first = None
    for f in range(n_frames):
        item = geometry.group_item(ds, f, "PixelValueTransformationSequence") or ds
        slope = float(item.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(item.get("RescaleIntercept", 0.0) or 0.0)
        first = first or (slope, intercept)
        out[:, f] = stored[:, f].astype(np.float32) * np.float32(slope) + np.float32(intercept)
    has_rescale = (
        "RescaleSlope" in ds
        or geometry.group_item(ds, 0, "PixelValueTransformationSequence") is not None
    )
    return out, first if has_rescale else None


def _window(ds: Dataset) -> tuple[float, float] | None:
    item = geometry.group_item(ds, 0, "FrameVOILUTSequence") or ds
    center, width = item.get("WindowCenter"), item.get("WindowWidth")
    if center is None or width is None:
        return None
    try:
        center = float(center[0] if isinstance(center, pydicom.multival.MultiValue) else center)
        width = float(width[0] if isinstance(width, pydicom.multival.MultiValue) else width)
    except (TypeError, ValueError, IndexError):
        return None
    return (center, width) if width > 0 else None


def _invert(
    ds: Dataset,
    array: np.ndarray,
    window: tuple[float, float] | None,
    rescale: tuple[float, float] | None,
) -> tuple[np.ndarray, tuple[float, float] | None]:
    """MONOCHROME1 -> MONOCHROME2 by reflecting values in the range the bit depth allows."""
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    if int(ds.get("PixelRepresentation", 0)) == 0:
        lo, hi = 0.0, float(2**bits - 1)
    else:
        lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    if rescale is not None:
        slope, intercept = rescale
        lo, hi = sorted((lo * slope + intercept, hi * slope + intercept))
    elif "ModalityLUTSequence" in ds:
        lo, hi = float(array.min()), float(array.max())
    inverted = np.float32(lo + hi) - array
    if window is not None:
        window = (lo + hi - window[0], window[1])
    return inverted, window
