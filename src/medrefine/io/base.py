"""The object every reader returns and every writer takes back (nnU-Net's reader/writer split)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

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


def stem_of(path: Path | str) -> str:
    name = Path(path).name
    for suffix in (".nii.gz", ".nii", ".dcm", ".dicom"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem
