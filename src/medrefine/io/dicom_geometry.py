"""DICOM geometry: where frames lie (ImagePositionPatient / orientation) and pixel spacing.

Looks in the enhanced multi-frame functional groups (per-frame first, then shared) and falls
back to the classic top-level attributes, so one code path serves CT/MR/enhanced/US files.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom.dataset import Dataset

if TYPE_CHECKING:
    from medrefine.io.dicom import DecodedFrames

logger = logging.getLogger(__name__)


def frame_order(
    n_frames: int, positions: np.ndarray | None, orientation: np.ndarray | None, path: Path
) -> np.ndarray:
    """Indices that sort frames along the slice normal; stored order when that is undefined."""
    if positions is None or orientation is None or n_frames < 2:
        return np.arange(n_frames)
    normal = np.cross(orientation[:3], orientation[3:])
    projected = positions @ normal
    if len(np.unique(np.round(projected, 4))) != len(projected):
        logger.warning(
            "%s: several frames share a slice position (time points or echoes?); "
            "keeping the stored frame order",
            path,
        )
        return np.arange(len(positions))
    return np.argsort(projected, kind="stable")


def volume_spacing(
    frames: DecodedFrames, positions: np.ndarray | None, path: Path
) -> tuple[float, float, float] | None:
    """(slice, row, col) spacing in mm; None when the in-plane spacing is unknown."""
    if frames.pixel_spacing is None:
        return None
    slice_spacing = frames.slice_spacing
    if positions is not None and frames.orientation is not None and len(positions) > 1:
        normal = np.cross(frames.orientation[:3], frames.orientation[3:])
        gaps = np.diff(positions @ normal)
        if np.all(gaps > 0):
            slice_spacing = float(np.median(gaps))
            if np.ptp(gaps) > 0.01 * slice_spacing + 1e-3:
                logger.warning(
                    "%s: slice gaps vary from %.3g to %.3g mm; using the median %.3g",
                    path,
                    gaps.min(),
                    gaps.max(),
                    slice_spacing,
                )
    if slice_spacing is None or slice_spacing <= 0:
        slice_spacing = 1.0
        if frames.array.shape[1] > 1:
            logger.warning("%s: slice spacing unknown; assuming 1 mm", path)
    return (float(slice_spacing), *frames.pixel_spacing)


def group_item(ds: Dataset, frame: int, sequence: str) -> Dataset | None:
    """First item of a functional-group sequence for ``frame`` (per-frame wins over shared)."""
    for groups, index in (
        ("PerFrameFunctionalGroupsSequence", frame),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        seq = ds.get(groups)
        if seq is not None and len(seq) > index:
            inner = seq[index].get(sequence)
            if inner is not None and len(inner) > 0:
                return inner[0]
    return None


def floats(value: Any, n: int) -> np.ndarray | None:
    try:
        out = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return out if out.shape == (n,) and np.all(np.isfinite(out)) else None


def orientation(ds: Dataset) -> np.ndarray | None:
    item = group_item(ds, 0, "PlaneOrientationSequence") or ds
    value = item.get("ImageOrientationPatient")
    return floats(value, 6) if value is not None else None


def positions(ds: Dataset, n_frames: int) -> np.ndarray | None:
    if "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds:
        found = []
        for f in range(n_frames):
            item = group_item(ds, f, "PlanePositionSequence")
            found.append(floats(item.get("ImagePositionPatient"), 3) if item else None)
        if all(p is not None for p in found):
            return np.stack(found)
        return None
    value = ds.get("ImagePositionPatient")
    if value is None or n_frames != 1:
        return None
    pos = floats(value, 3)
    return pos[None] if pos is not None else None


def pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
    item = group_item(ds, 0, "PixelMeasuresSequence") or ds
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = item.get(keyword) or ds.get(keyword)
        spacing = floats(value, 2) if value is not None else None
        if spacing is not None and np.all(spacing > 0):
            return (float(spacing[0]), float(spacing[1]))
    return ultrasound_spacing(ds)


def ultrasound_spacing(ds: Dataset) -> tuple[float, float] | None:
    """Spacing from the first ultrasound region when its physical units are cm (code 3)."""
    regions = ds.get("SequenceOfUltrasoundRegions")
    if not regions:
        return None
    deltas = {
        (float(r.get("PhysicalDeltaY", 0) or 0), float(r.get("PhysicalDeltaX", 0) or 0))
        for r in regions
        if r.get("PhysicalUnitsXDirection") == 3 and r.get("PhysicalUnitsYDirection") == 3
    }
    if len(deltas) != 1:
        return None
    dy, dx = deltas.pop()
    return (abs(dy) * 10.0, abs(dx) * 10.0) if dx and dy else None


def slice_spacing(ds: Dataset) -> float | None:
    item = group_item(ds, 0, "PixelMeasuresSequence") or ds
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = item.get(keyword) if keyword in item else ds.get(keyword)
        try:
            if value is not None and float(value) > 0:
                return float(value)
        except (TypeError, ValueError):
            continue
    return None
