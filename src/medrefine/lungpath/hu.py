"""Hounsfield units: the DiffSegLung normalisation and the checks that an input is CT in HU.

``normalise_hu``: (HU + 1000) / 700 - 1 (DiffSegLung, sec. 2.1). It maps air (-1000 HU) to -1
and +400 HU to +1; the issue's summary "normal lung 0" does not follow from the formula:
normal lung (about -850 HU) lands at -0.79 and 0 is -300 HU. Values are clipped to [-1, 1].
8-bit slices (lung-window pictures, no HU) are mapped linearly, 0..255 -> -1..1, which treats
them as the same lung window.
"""

from __future__ import annotations

import numpy as np

from medrefine.errors import InputError
from medrefine.io import LoadedImage

HU_AIR = -1000.0


def normalise_hu(hu: np.ndarray) -> np.ndarray:
    """HU -> [-1, 1] as (HU + 1000) / 700 - 1, clipped; float32, same shape."""
    return np.clip((np.asarray(hu, np.float32) - HU_AIR) / 700.0 - 1.0, -1.0, 1.0)


def hu_from_normalised(x: np.ndarray) -> np.ndarray:
    return (np.asarray(x, np.float32) + 1.0) * 700.0 + HU_AIR


def normalise_8bit(image: np.ndarray) -> np.ndarray:
    """0..255 -> [-1, 1] (an 8-bit lung-window slice read as the same window)."""
    return np.clip(np.asarray(image, np.float32) / 127.5 - 1.0, -1.0, 1.0)


def check_hu(image: LoadedImage) -> np.ndarray:
    """The HU array (D, H, W) or (H, W) of a CT input, or an InputError in one line.

    Refused: a non-CT DICOM (MR, CR, US...), colour images, an 8-bit picture passed as HU
    (values within 0..255 and no air below -500), and anything without air at about
    -1000 HU (an MR volume, a mask, a normalised array)."""
    name = str(image.path) if image.path is not None else "image"
    fmt, modality = image.meta.get("format"), str(image.meta.get("modality") or "OT")
    if fmt == "dicom" and modality not in ("CT", "OT"):
        raise InputError(
            f"{name}: is a {modality} image, not CT; lung-pathology needs CT in Hounsfield units"
        )
    if image.channels != 1:
        raise InputError(
            f"{name}: has {image.channels} channels (a colour picture?); "
            "lung-pathology needs single-channel CT in Hounsfield units"
        )
    array = image.array[0]
    lo, hi = float(array.min()), float(array.max())
    src = str(image.meta.get("source_dtype", ""))
    if (src in ("uint8", "bool") or (lo >= 0 and hi <= 255)) and lo > -500:
        raise InputError(
            f"{name}: values {lo:g}..{hi:g} look like an 8-bit picture, not "
            "Hounsfield units (no air at -1000 HU); for 8-bit slices use "
            "--intensity rank (with --lung-masks DIR)"
        )
    if np.mean(array < -500) < 0.01 or hi < -200:
        raise InputError(
            f"{name}: values {lo:g}..{hi:g} are not CT in Hounsfield units "
            "(under 1% of voxels below -500 HU: no air, no lung); give a chest CT "
            "in HU"
        )
    return array


def check_8bit(image: LoadedImage) -> np.ndarray:
    """The grey values (H, W) or (D, H, W) of an 8-bit slice for the rank mode."""
    name = str(image.path) if image.path is not None else "image"
    array = image.array.mean(axis=0) if image.channels in (3, 4) else image.array[0]
    if float(array.min()) < 0 or float(array.max()) > 255:
        raise InputError(
            f"{name}: values {float(array.min()):g}..{float(array.max()):g} are "
            "not 8-bit (0..255); --intensity rank is for 8-bit slices, CT in HU "
            "takes --intensity hu"
        )
    return array.astype(np.float32)
