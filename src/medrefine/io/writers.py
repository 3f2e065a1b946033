"""Write masks (PNG, NIfTI, DICOM-SEG), float maps (NIfTI), images (PNG) and JSON, atomically.

Every writer goes through ``atomic_output``: the file is written under a temporary name in the
target folder and renamed into place, so a crash never leaves a half-written output.
When ``like`` (the LoadedImage the result was computed from) is given, outputs keep its
geometry: the NIfTI affine/header and voxel order, or the DICOM instances a SEG references.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from PIL import Image

from medrefine.errors import ConfigError, InputError
from medrefine.io.base import LoadedImage, atomic_output, full_suffix

logger = logging.getLogger(__name__)

MASK_FORMATS = {".png": "png", ".nii": "nifti", ".nii.gz": "nifti", ".dcm": "dicom-seg"}
_FORMAT_ALIASES = {
    "png": "png",
    "nifti": "nifti",
    "nii": "nifti",
    "dicom-seg": "dicom-seg",
    "dicom": "dicom-seg",
    "seg": "dicom-seg",
}


def write_mask(
    mask: np.ndarray,
    path: str | Path,
    like: LoadedImage | None = None,
    format: str | None = None,  # noqa: A002
    *,
    label_names: Sequence[str] | None = None,
    algorithm_name: str = "medrefine",
    series_description: str = "medrefine segmentation",
) -> Path:
    """Write a binary mask or label map.

    Args:
        mask: bool/integer (or integral float) label map on the input grid: (H, W) or
            (D, H, W), optionally with a leading channel axis of size 1. Values 0..255.
        path: output file; ``.png``, ``.nii``/``.nii.gz`` or ``.dcm`` (DICOM-SEG).
        like: the image the mask belongs to; its shape is enforced and its geometry kept.
        format: ``png``, ``nifti`` or ``dicom-seg``; default from the suffix of ``path``.
        label_names: DICOM-SEG segment labels, one per label value 1..K.
        algorithm_name: DICOM-SEG algorithm name (version is ``medrefine.__version__``).
        series_description: DICOM-SEG series description.

    Returns:
        The path written. PNG: binary masks as 0/255, label maps as their values.
        NIfTI: uint8 with the input's affine, header and voxel order. DICOM-SEG: BINARY
        segmentation referencing ``like``'s source instances.
    """
    path = Path(path)
    fmt = _mask_format(path, format)
    labels = _as_label_map(mask, like, path)
    if fmt == "png":
        if labels.ndim == 3 and labels.shape[0] == 1:
            labels = labels[0]
        if labels.ndim != 2:
            raise InputError(
                f"{path}: PNG holds one 2D mask but the mask has shape "
                f"{labels.shape}; write volumes as .nii.gz or DICOM-SEG"
            )
        binary = int(labels.max(initial=0)) <= 1
        _save_png(labels * np.uint8(255) if binary else labels, path)
        return path
    if fmt == "nifti":
        write_nifti(labels, path, like, dtype=np.uint8)
        return path
    from medrefine.io.dicom_seg import write_dicom_seg

    if like is None:
        raise ConfigError(
            f"{path}: a DICOM-SEG must reference the DICOM image it segments; pass "
            "like=<the LoadedImage>, or write .nii.gz/.png"
        )
    return write_dicom_seg(
        labels,
        path,
        like,
        label_names=label_names,
        algorithm_name=algorithm_name,
        series_description=series_description,
    )


def write_float_nifti(array: np.ndarray, path: str | Path, like: LoadedImage | None = None) -> Path:
    """Write a float32 map (probabilities, uncertainty) as NIfTI on the input grid.

    Args:
        array: (H, W) / (D, H, W) on the grid of ``like``; one more leading axis is taken as
            channels (written as the 4th NIfTI axis). Without ``like`` a 4D array is
            (C, D, H, W) and anything else is spatial.
        path: ``.nii`` or ``.nii.gz`` output.
        like: the input image, for the affine/header and voxel order.
    """
    path = Path(path)
    _mask_format(path, "nifti")
    array = np.asarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise InputError(
            f"{path}: map contains NaN or infinite values; fix the computation that produced it"
        )
    spatial_ndim = len(like.spatial_shape) if like is not None else min(array.ndim, 3)
    has_channels = array.ndim == spatial_ndim + 1
    if like is not None:
        spatial = array.shape[1:] if has_channels else array.shape
        _check_shape(spatial, like, path)
    write_nifti(array, path, like, dtype=np.float32, has_channels=has_channels)
    return Path(path)


def write_image_png(image: np.ndarray, path: str | Path) -> Path:
    """Write an image as 8-bit (or 16-bit gray) PNG.

    Args:
        image: (H, W) or channel-first (C, H, W) with C in 1, 3, 4; channel-last (H, W, 3|4) is
            accepted too. uint8 and uint16 are written as they are, bool as 0/255, float must
            lie in [0, 1] (``image01``) and is scaled to 0..255.
    """
    path = Path(path)
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)
    elif not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4))):
        raise InputError(
            f"{path}: cannot write an image of shape {array.shape} as PNG; expected "
            "(H, W), (C, H, W) or (H, W, C) with C in 1, 3, 4"
        )
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif array.dtype.kind == "f":
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise InputError(
                f"{path}: float image must lie in [0, 1] (got "
                f"{np.nanmin(array):g}..{np.nanmax(array):g}); normalise it first"
            )
        array = np.round(array * 255).astype(np.uint8)
    elif array.dtype == np.uint16 and array.ndim != 2:
        raise InputError(f"{path}: 16-bit PNG output is gray only; convert colour to uint8")
    elif array.dtype not in (np.uint8, np.uint16):
        raise InputError(
            f"{path}: image dtype {array.dtype} cannot be written as PNG; give "
            "uint8, uint16, bool or float in [0, 1]"
        )
    _save_png(array, path)
    return path


def write_nifti(
    array: np.ndarray,
    path: Path,
    like: LoadedImage | None,
    *,
    dtype: type,
    has_channels: bool = False,
) -> None:
    """Shared NIfTI writer: on ``like``'s disk grid when it is NIfTI, else a fresh affine."""
    from medrefine.io.nifti import to_disk_voxels

    path = Path(path)
    _mask_format(path, "nifti")
    if like is not None and like.meta.get("format") == "nifti":
        data = to_disk_voxels(array, like.meta, path, has_channels=has_channels)
        header = like.meta["header"].copy()
        cls = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
        img = cls(data.astype(dtype), like.meta["affine"], header=header)
    else:
        stack = array if has_channels else array[None]  # (C, [D,] H, W)
        data = np.transpose(stack, (*range(stack.ndim - 1, 0, -1), 0))  # (W, H, [D,] C)
        data = data if has_channels else data[..., 0]
        affine = _affine_for(like, stack.shape[1:])
        img = nib.Nifti1Image(data.astype(dtype), affine)
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
        img.header.set_xyzt_units("mm")
    img.set_data_dtype(dtype)
    if dtype == np.uint8:
        img.header.set_slope_inter(1.0, 0.0)  # labels are stored values, never rescaled
    else:
        img.header.set_slope_inter(np.nan, np.nan)
    img.header["cal_min"], img.header["cal_max"] = 0.0, 0.0
    with atomic_output(path) as tmp:
        nib.save(img, tmp)


def _affine_for(like: LoadedImage | None, spatial: tuple[int, ...]) -> np.ndarray:
    """RAS affine for voxels (W, H, D): from DICOM geometry when known, else from spacing.

    Our arrays run (D, H, W) = (superior, posterior, left) for axial data, so the spacing-only
    affine is diag(-sw, -sh, sd): ``read_nifti`` then gives back the same array orientation.
    """
    has_spacing = like is not None and like.spacing is not None
    spacing = list(like.spacing) if has_spacing else [1.0] * len(spatial)
    sw, sh = float(spacing[-1]), float(spacing[-2])
    sd = float(spacing[0]) if len(spacing) == 3 else 1.0
    affine = np.diag([-sw, -sh, sd, 1.0])
    meta = like.meta if like is not None else {}
    iop, ipp = meta.get("image_orientation"), meta.get("image_positions")
    if meta.get("format") == "dicom" and iop and ipp and meta.get("slice") is None:
        row_dir, col_dir = np.asarray(iop[:3]), np.asarray(iop[3:])
        positions = np.asarray(ipp, dtype=float)
        if len(positions) > 1:
            step = (positions[-1] - positions[0]) / (len(positions) - 1)
        else:
            step = np.cross(row_dir, col_dir) * sd
        lps = np.eye(4)
        lps[:3, 0], lps[:3, 1], lps[:3, 2] = row_dir * sw, col_dir * sh, step
        lps[:3, 3] = positions[0]
        affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # DICOM LPS -> NIfTI RAS
    return affine


def write_json(path: str | Path, data: Any) -> Path:
    """Write JSON atomically (NaN becomes null so other tools can read it)."""
    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(_json_safe(data), indent=2) + "\n")
    return path


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def _mask_format(path: Path, format: str | None) -> str:  # noqa: A002
    by_suffix = MASK_FORMATS.get(full_suffix(path))
    if format is None:
        if by_suffix is None:
            raise ConfigError(
                f"{path}: cannot tell the output format from suffix "
                f"{full_suffix(path)!r}; use .png, .nii.gz or .dcm"
            )
        return by_suffix
    fmt = _FORMAT_ALIASES.get(format.lower())
    if fmt is None:
        raise ConfigError(f"unknown mask format {format!r}; use png, nifti or dicom-seg")
    if by_suffix != fmt:
        expected = {"png": ".png", "nifti": ".nii.gz", "dicom-seg": ".dcm"}[fmt]
        raise ConfigError(
            f"{path}: suffix {full_suffix(path)!r} does not fit format {fmt!r}; "
            f"name the file *{expected}"
        )
    return fmt


def _as_label_map(mask: np.ndarray, like: LoadedImage | None, path: Path) -> np.ndarray:
    """Validate and convert to uint8 (H, W) / (D, H, W); drops a leading channel axis of 1."""
    array = np.asarray(mask)
    spatial_ndim = len(like.spatial_shape) if like is not None else None
    if array.ndim >= 3 and array.shape[0] == 1 and (array.ndim == 4 or spatial_ndim == 2):
        array = array[0]
    if array.ndim not in (2, 3):
        raise InputError(f"{path}: mask of shape {array.shape} is not (H, W) or (D, H, W)")
    if like is not None:
        _check_shape(array.shape, like, path)
    if array.dtype == bool:
        return array.astype(np.uint8)
    if array.dtype.kind == "f":
        if not np.isfinite(array).all() or not np.array_equal(array, np.round(array)):
            raise InputError(
                f"{path}: mask has fractional or non-finite values; threshold "
                "probabilities first, or write them with write_float_nifti"
            )
    elif array.dtype.kind not in "ui":
        raise InputError(f"{path}: mask dtype {array.dtype} is not bool, integer or float")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise InputError(f"{path}: mask values {array.min()}..{array.max()} are outside 0..255")
    labels = array.astype(np.uint8)
    if labels.size and set(np.unique(labels).tolist()) == {0, 255}:
        labels = (labels > 0).astype(np.uint8)  # a 0/255 binary mask is still binary
    return labels


def _check_shape(shape: tuple[int, ...], like: LoadedImage, path: Path) -> None:
    if tuple(shape) != tuple(like.spatial_shape):
        raise InputError(
            f"{path}: mask shape {tuple(shape)} differs from the input image's "
            f"{like.spatial_shape}; map it back to the input grid first"
        )


def _save_png(array: np.ndarray, path: Path) -> None:
    with atomic_output(path) as tmp:
        Image.fromarray(np.ascontiguousarray(array)).save(tmp, format="PNG")
