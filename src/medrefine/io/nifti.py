"""NIfTI-1/2 volumes (.nii, .nii.gz) read with nibabel, and the inverse mapping for writers.

Axis order returned by ``read_nifti`` (default ``reorient=True``): voxels are reoriented to
the closest L-P-S grid and transposed, so the array is (C, D, H, W) with D running inferior ->
superior, H anterior -> posterior and W right -> left: an axial slice ``array[:, d]`` looks like
an axial DICOM slice in a radiology viewer (patient's right on the image left, anterior at the
top), and D matches the slice order of our DICOM reader. ``spacing`` is (D, H, W) in mm.
With ``reorient=False`` the array is the voxel grid transposed: (C, k, j, i). A 2D file
(or one with a single slice) gives (C, H, W); it is flipped in-plane to the same L-P display
when its plane is axial and left in voxel order (transposed) otherwise.

``meta`` keeps what a writer needs to put a result back on the exact input grid: ``affine``
(4x4), ``header`` (a copy of the nibabel header), ``nifti_shape`` (the data shape on disk),
``ornt_transform`` (nibabel orientation transform from disk voxels to the reoriented voxels,
before the final transpose) and ``slice`` (the D index when one slice was requested).
"""

from __future__ import annotations

import logging
import zlib
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

from medrefine.errors import InputError, UnsupportedFormatError
from medrefine.io.base import MAX_VOXELS, LoadedImage, check_size, finite_float32
from medrefine.io.limits import check_decoded_size

logger = logging.getLogger(__name__)

MAX_CHANNELS = 16  # a 4D file with more volumes than this is a time series, not channels
_TARGET = axcodes2ornt(("L", "P", "S"))  # voxel axes i, j, k after reorientation
_IDENTITY = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)


def read_nifti(path: Path, *, slice: int | None = None, reorient: bool = True) -> LoadedImage:  # noqa: A002
    """Read a NIfTI file.

    Args:
        path: ``.nii`` or ``.nii.gz`` file (2D, 3D, or 4D with the 4th axis as channels).
        slice: D index of one slice to return as (C, H, W); None returns all slices.
        reorient: reorient to the L-P-S display grid described in the module docstring.

    Returns:
        LoadedImage, array (C, D, H, W) for volumes, (C, H, W) for 2D files or one slice.
        meta: ``format`` "nifti", ``source_dtype``, ``modality`` "OT", ``affine``, ``header``,
        ``nifti_shape``, ``ornt_transform``, ``slice``, ``axcodes`` (orientation on disk),
        ``number_of_frames`` (D).
    """
    path = Path(path)
    try:
        img = nib.load(path)
    except Exception as err:  # nibabel raises ImageFileError, OSError, EOFError, zlib.error...
        raise InputError(
            f"{path}: cannot read NIfTI header ({type(err).__name__}: {err}); the "
            "file is damaged or not NIfTI"
        ) from err
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise UnsupportedFormatError(
            f"{path}: {type(img).__name__} is not NIfTI; convert it to .nii.gz"
        )
    shape = tuple(int(n) for n in img.shape)
    check_decoded_size(path, shape, _itemsize(img, path), "voxels")  # before any voxel is read
    check_size(path, shape, MAX_VOXELS)
    spatial, channels = _split_shape(shape, path)
    affine = _finite_affine(img, path)
    try:
        data = np.asarray(img.get_fdata(dtype=np.float32, caching="unchanged"))
    except (OSError, EOFError, ValueError, OverflowError, zlib.error) as err:
        raise InputError(
            f"{path}: cannot read NIfTI voxel data ({err}); the file is probably "
            "truncated, re-export it"
        ) from err
    data = data.reshape(*spatial, channels)  # (X, Y, Z, C)
    transform = _transform(affine, spatial) if reorient else _IDENTITY
    data = apply_orientation(data, transform)
    array = np.transpose(data, (3, 2, 1, 0))  # (C, D, H, W)
    zooms = np.asarray(img.header.get_zooms()[:3], dtype=float)
    zooms = np.concatenate([zooms, np.ones(3 - len(zooms))])
    if not (np.all(np.isfinite(zooms)) and np.all(zooms > 0)):
        logger.warning("%s: voxel sizes %s are not positive numbers; using 1 mm", path, zooms)
        zooms = np.where(np.isfinite(zooms) & (zooms > 0), zooms, 1.0)
    zooms_r = np.empty(3)
    zooms_r[transform[:, 0].astype(int)] = zooms
    spacing: tuple[float, ...] = (float(zooms_r[2]), float(zooms_r[1]), float(zooms_r[0]))
    two_d = len(shape) == 2 or (spatial[2] == 1 and array.shape[1] == 1)
    if slice is not None:
        depth = array.shape[1]
        if not 0 <= int(slice) < depth:
            raise InputError(
                f"{path}: slice {slice} is outside the volume's 0..{depth - 1} "
                "slices; pick a slice in range"
            )
        array = array[:, int(slice)]
        spacing = spacing[1:]
    elif two_d:
        array = array[:, 0]
        spacing = spacing[1:]
    meta: dict[str, Any] = {
        "format": "nifti",
        "source_dtype": str(img.get_data_dtype()),
        "modality": "OT",
        "affine": affine,
        "header": img.header.copy(),
        "nifti_shape": shape,
        "ornt_transform": transform.tolist(),
        "slice": None if slice is None else int(slice),
        "axcodes": _axcodes(affine),
        "number_of_frames": int(1 if two_d else data.shape[2]),
    }
    return LoadedImage(finite_float32(array, path), spacing, meta, path)


def _split_shape(shape: tuple[int, ...], path: Path) -> tuple[tuple[int, int, int], int]:
    """(X, Y, Z) and channel count from the data shape; 5D only with a size-1 time axis."""
    if len(shape) == 5 and shape[3] == 1:
        shape = (*shape[:3], shape[4])
    if len(shape) == 2:
        return (shape[0], shape[1], 1), 1
    if len(shape) == 3:
        return (shape[0], shape[1], shape[2]), 1
    if len(shape) == 4:
        if shape[3] > MAX_CHANNELS:
            raise UnsupportedFormatError(
                f"{path}: 4D NIfTI with {shape[3]} volumes looks like a time series; medrefine "
                f"takes at most {MAX_CHANNELS} as channels; split it (e.g. fslsplit) first"
            )
        return (shape[0], shape[1], shape[2]), shape[3]
    raise UnsupportedFormatError(
        f"{path}: NIfTI with shape {shape} is not 2D, 3D or 4D; save one volume per file"
    )


def _itemsize(img, path: Path) -> int:
    try:
        return int(img.get_data_dtype().itemsize)
    except (TypeError, ValueError) as err:
        raise InputError(f"{path}: NIfTI header has no usable data type ({err})") from err


def _finite_affine(img, path: Path) -> np.ndarray:
    """The image's affine, or the voxel grid scaled by the voxel sizes when the header's
    qform/sform is NaN or singular (then nothing can be reoriented: the voxel order is kept)."""
    try:
        affine = np.array(img.affine, dtype=np.float64)
        usable = np.all(np.isfinite(affine)) and abs(np.linalg.det(affine[:3, :3])) > 1e-12
    except (ValueError, TypeError, OverflowError, np.linalg.LinAlgError):
        affine, usable = np.eye(4), False
    if not usable:
        logger.warning("%s: the header's affine is NaN or singular; keeping the voxel order", path)
        affine = np.eye(4)
    return affine


def _axcodes(affine: np.ndarray) -> str:
    try:
        return "".join(c or "?" for c in nib.aff2axcodes(affine))
    except (ValueError, np.linalg.LinAlgError):
        return "???"


def _transform(affine: np.ndarray, spatial: tuple[int, int, int]) -> np.ndarray:
    """Orientation transform to the L-P-S grid; a 2D image keeps its singleton third axis."""
    if not np.all(np.isfinite(affine)):
        logger.warning("affine has non-finite values; keeping the voxel order")
        return _IDENTITY
    try:
        transform = ornt_transform(io_orientation(affine), _TARGET)
    except (ValueError, np.linalg.LinAlgError):
        logger.warning("affine has no clear orientation; keeping the voxel order")
        return _IDENTITY
    if spatial[2] == 1 and int(transform[2, 0]) != 2:
        return _IDENTITY  # a 2D image whose plane is not axial: do not turn it on its side
    return transform


# ------------------------------------------------------------------------------ writer helpers
def to_disk_voxels(
    array: np.ndarray, meta: dict[str, Any], path: Path, *, has_channels: bool = False
) -> np.ndarray:
    """Map an array on the ``read_nifti`` grid back to the file's voxel grid.

    Args:
        array: (D, H, W), or (H, W) for 2D files and one-slice reads; with ``has_channels``
            a leading channel axis: (C, D, H, W) / (C, H, W).
        meta: the ``meta`` of the LoadedImage read from the NIfTI file.
        path: the output file, for error messages.

    Returns:
        (X, Y, Z), (X, Y) for a 2D file, or with a trailing channel axis (X, Y, Z, C).
        A single slice is put back at its index in an otherwise zero volume.
    """
    disk_shape = tuple(int(n) for n in meta["nifti_shape"])
    spatial, _ = _split_shape(disk_shape, path)
    transform = np.asarray(meta["ornt_transform"], dtype=float)
    reoriented = np.empty(3, int)
    reoriented[transform[:, 0].astype(int)] = spatial  # (X', Y', Z') after reorientation
    d, h, w = int(reoriented[2]), int(reoriented[1]), int(reoriented[0])
    stack = array if has_channels else array[None]  # (C, ...)
    if stack.ndim == 3 and meta.get("slice") is None:  # (C, H, W) of a 2D file
        stack = stack[:, None]
    elif stack.ndim == 3 and stack.shape[1:] == (h, w):  # one slice of a volume
        full = np.zeros((stack.shape[0], d, h, w), dtype=stack.dtype)
        full[:, int(meta["slice"])] = stack
        stack = full
    if stack.ndim != 4 or stack.shape[1:] != (d, h, w):
        raise InputError(
            f"{path}: array of shape {array.shape} does not match the source grid "
            f"{(d, h, w)} (D, H, W); resample it to the input grid first"
        )
    data = np.transpose(stack, (3, 2, 1, 0))  # (X', Y', Z', C)
    data = _undo_orientation(data, transform)  # (X, Y, Z, C)
    if len(disk_shape) == 2:
        data = data[:, :, 0]
    return data if has_channels else data[..., 0]


def _undo_orientation(data: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """Inverse of ``apply_orientation(data, transform)`` on the first three axes."""
    inverse = np.empty_like(transform)
    for axis, (new_axis, flip) in enumerate(transform):
        inverse[int(new_axis)] = (axis, flip)
    return apply_orientation(data, inverse)
