"""A folder holding one DICOM series, read as a volume (C, D, H, W).

Slices are sorted by ImagePositionPatient projected on the slice normal (the ITK/SimpleITK
convention), falling back to InstanceNumber when positions are missing. Folders holding several
image series are refused with a list of them, so the user picks one instead of getting a mix.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from medrefine.errors import InputError, UnsupportedFormatError
from medrefine.io.base import MAX_VOXELS, LoadedImage, check_size, finite_float32
from medrefine.io.dicom import (
    DecodedFrames,
    decode_frames,
    dicom_meta,
    header_int,
    open_dicom,
    read_dicom,
    refuse_non_image,
)
from medrefine.io.dicom_geometry import floats, volume_spacing
from medrefine.io.limits import check_decoded_size
from medrefine.io.sniff import sniff_format

logger = logging.getLogger(__name__)

_SKIP_NAMES = {"DICOMDIR", "LOCKFILE", "VERSION"}


def read_dicom_folder(folder: Path) -> LoadedImage:
    """Read the one image series in ``folder`` (not recursive) as (C, D, H, W).

    Files that are not DICOM and DICOM objects without pixels (SEG, RTSTRUCT, SR) are skipped.
    A folder whose single image is a multi-frame file is read like that file.

    Raises:
        InputError: no DICOM images, several series, mixed image sizes or duplicated slices.
    """
    folder = Path(folder)
    headers = _scan(folder)
    if not headers:
        raise InputError(
            f"{folder}: folder holds no DICOM image files; give a folder with one "
            "series of .dcm slices, or a single file"
        )
    groups: dict[str, list[tuple[Path, Dataset]]] = defaultdict(list)
    for path, ds in headers:
        groups[str(ds.get("SeriesInstanceUID", "unknown"))].append((path, ds))
    if len(groups) > 1:
        listing = "; ".join(
            f"{uid} ({items[0][1].get('Modality', '?')}, "
            f"{str(items[0][1].get('SeriesDescription', '') or 'no description')!r}, "
            f"{len(items)} files, e.g. {items[0][0].name})"
            for uid, items in groups.items()
        )
        raise InputError(
            f"{folder}: folder holds {len(groups)} DICOM series; put each series in "
            f"its own folder or give one file. Series: {listing}"
        )
    items = next(iter(groups.values()))
    if len(items) == 1:
        image = read_dicom(items[0][0])
        image.path = folder
        return image
    first, first_path = items[0][1], items[0][0]
    shape = (
        len(items),
        header_int(first, "Rows", 0, first_path),
        header_int(first, "Columns", 0, first_path),
        header_int(first, "SamplesPerPixel", 1, first_path) or 1,
    )
    check_size(folder, shape, MAX_VOXELS)
    bits = header_int(first, "BitsAllocated", 16, first_path)
    check_decoded_size(folder, shape, max(bits, 8) / 8, "pixel values")
    paths = [p for p, _ in _sort(items, folder)]
    return _read_sorted(folder, paths)


def _scan(folder: Path) -> list[tuple[Path, Dataset]]:
    """Headers (no pixels) of the image DICOM files directly inside ``folder``."""
    found = []
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith(".") or path.name.upper() in _SKIP_NAMES:
            continue
        try:
            if sniff_format(path) != "dicom":
                continue
            ds = open_dicom(path, stop_before_pixels=True)
        except InputError:
            logger.debug("%s: not DICOM, skipped", path)
            continue
        if not path.stat().st_size or "Rows" not in ds:
            logger.info("%s: DICOM without an image (%s), skipped", path, ds.get("Modality"))
            continue
        if ds.get("Modality") == "SEG":
            logger.info("%s: DICOM-SEG skipped; read it with read_mask", path)
            continue
        found.append((path, ds))
    return found


def _sort(items: list[tuple[Path, Dataset]], folder: Path) -> list[tuple[Path, Dataset]]:
    """Along the slice normal if every file has a position, else by InstanceNumber."""
    sizes = {(header_int(ds, "Rows", 0, p), header_int(ds, "Columns", 0, p)) for p, ds in items}
    if len(sizes) > 1:
        raise InputError(
            f"{folder}: the series mixes image sizes {sorted(sizes)}; it is not one "
            "volume, split it into folders by size"
        )
    if any((header_int(ds, "NumberOfFrames", 1, p) or 1) > 1 for p, ds in items):
        raise UnsupportedFormatError(
            f"{folder}: the series mixes several multi-frame files; give the files one at a time"
        )
    iop = floats(items[0][1].get("ImageOrientationPatient") or (), 6)
    found = [floats(ds.get("ImagePositionPatient") or (), 3) for _, ds in items]
    if iop is not None and all(p is not None for p in found):
        normal = np.cross(iop[:3], iop[3:])
        keys = [float(np.dot(p, normal)) for p in found]
        if len(set(np.round(keys, 4))) != len(keys):
            raise InputError(
                f"{folder}: several files share a slice position (time points, "
                "echoes or duplicates); keep one image per position in the folder"
            )
        return [item for _, item in sorted(zip(keys, items, strict=True), key=lambda t: t[0])]
    numbers = [header_int(ds, "InstanceNumber", -1, p) for p, ds in items]
    if all(n >= 0 for n in numbers):
        logger.warning("%s: slices have no ImagePositionPatient; sorted by InstanceNumber", folder)
        order = sorted(range(len(items)), key=numbers.__getitem__)
        return [items[i] for i in order]
    logger.warning("%s: slices have no position or instance number; sorted by file name", folder)
    return items


def _read_sorted(folder: Path, paths: list[Path]) -> LoadedImage:
    datasets, decoded = [], []
    array = None
    for index, path in enumerate(paths):
        ds = open_dicom(path)
        refuse_non_image(ds, path)
        frames = decode_frames(ds, path)
        if array is None:
            c, _, h, w = frames.array.shape
            array = np.empty((c, len(paths), h, w), np.float32)  # (C, D, H, W)
        if frames.array.shape != (array.shape[0], 1, *array.shape[2:]):
            raise InputError(
                f"{path}: channels/size {frames.array.shape} differ from the first "
                f"slice {(array.shape[0], 1, *array.shape[2:])}; the folder is not "
                "one volume"
            )
        array[:, index] = frames.array[:, 0]
        frames.array = frames.array[:, :0]  # keep geometry, drop the pixel copy
        datasets.append(ds)
        decoded.append(frames)
    first = decoded[0]
    positions = None
    if all(f.positions is not None for f in decoded):
        positions = np.concatenate([f.positions for f in decoded], axis=0)
    merged = DecodedFrames(
        array=array,
        source_dtype=first.source_dtype,
        photometric=first.photometric,
        inverted=first.inverted,
        orientation=first.orientation,
        positions=positions,
        pixel_spacing=first.pixel_spacing,
        slice_spacing=first.slice_spacing,
        window=first.window,
        rescale=first.rescale,
    )
    spacing = volume_spacing(merged, positions, folder)
    meta = dicom_meta(datasets, merged, positions)
    meta["number_of_frames"] = len(paths)
    meta["frame_order"] = None
    meta["files"] = [str(p) for p in paths]
    return LoadedImage(finite_float32(array, folder), spacing, meta, folder)
