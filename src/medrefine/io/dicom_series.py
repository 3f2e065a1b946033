"""A folder holding one DICOM series, read as a volume (C, D, H, W).

Slices are sorted by ImagePositionPatient projected on the slice normal (the ITK/SimpleITK
convention), falling back to InstanceNumber when positions are missing. Folders holding several
image series are refused with a list of them, so the user picks one instead of getting a mix.
A series whose slices are not evenly spaced (a missing slice) is refused, or with
``allow_gaps`` put on a regular grid with the gaps filled and listed (``slice_grid.py``).
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
from medrefine.io.slice_grid import (
    SliceGrid,
    describe_gaps,
    grid_positions,
    plan_grid,
    resample,
    uneven_gaps,
)
from medrefine.io.sniff import sniff_format

logger = logging.getLogger(__name__)

_SKIP_NAMES = {"DICOMDIR", "LOCKFILE", "VERSION"}


def read_dicom_folder(folder: Path, *, allow_gaps: bool = False) -> LoadedImage:
    """Read the one image series in ``folder`` (not recursive) as (C, D, H, W).

    Files that are not DICOM and DICOM objects without pixels (SEG, RTSTRUCT, SR) are skipped.
    A folder whose single image is a multi-frame file is read like that file.

    Args:
        folder: the series folder.
        allow_gaps: read a series whose slices are not evenly spaced (a missing slice) on the
            regular grid of its smallest spacing, each slice on the plane of its true position:
            D is then the number of planes, ``meta["filled_slices"]`` lists the D indices that
            no slice lies on (filled by linear interpolation between the slices around them)
            and ``meta["source_slices"]`` gives the D index of each file (``meta["files"]``,
            ``sop_instance_uids`` and ``source_datasets`` keep one entry per file). Without it
            such a series is refused.

    Raises:
        InputError: no DICOM images, several series, mixed image sizes, duplicated slices, or
            slices not evenly spaced without ``allow_gaps``.
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
    items, z = _sort(items, folder)
    paths = [p for p, _ in items]
    grid = None
    if z is not None and uneven_gaps(z):
        if not allow_gaps:
            raise InputError(describe_gaps(z, paths, folder))
        grid = plan_grid(z)
    first, first_path = items[0][1], items[0][0]
    plane = (
        header_int(first, "Rows", 0, first_path),
        header_int(first, "Columns", 0, first_path),
        header_int(first, "SamplesPerPixel", 1, first_path) or 1,
    )
    depth = grid.depth if grid is not None else len(items)
    check_size(folder, (depth, *plane), MAX_VOXELS)
    bits = header_int(first, "BitsAllocated", 16, first_path)
    held = len(items) + (depth if grid is not None else 0)  # the slices, then the grid
    check_decoded_size(folder, (held, *plane), max(bits, 8) / 8, "pixel values")
    return _read_sorted(folder, paths, grid, z)


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


def _sort(
    items: list[tuple[Path, Dataset]], folder: Path
) -> tuple[list[tuple[Path, Dataset]], np.ndarray | None]:
    """Along the slice normal if every file has a position (returned too, ascending, in mm),
    else by InstanceNumber (positions None)."""
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
        order = np.argsort(keys, kind="stable")
        return [items[i] for i in order], np.asarray(keys)[order]
    numbers = [header_int(ds, "InstanceNumber", -1, p) for p, ds in items]
    if all(n >= 0 for n in numbers):
        logger.warning("%s: slices have no ImagePositionPatient; sorted by InstanceNumber", folder)
        order = sorted(range(len(items)), key=numbers.__getitem__)
        return [items[i] for i in order], None
    logger.warning("%s: slices have no position or instance number; sorted by file name", folder)
    return items, None


def _read_sorted(
    folder: Path, paths: list[Path], grid: SliceGrid | None, z: np.ndarray | None
) -> LoadedImage:
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
    if grid is not None and z is not None:
        array = resample(array, grid)  # (C, D, H, W) on the regular grid
        positions = grid_positions(positions, z, grid) if positions is not None else None
        filled = grid.filled
        logger.warning(
            "%s: %d of %d planes have no slice of their own (D index %s%s); filled by linear "
            "interpolation between the slices around them, every slice on a %.4g mm grid at "
            "its true position",
            folder,
            len(filled),
            grid.depth,
            ", ".join(str(k) for k in filled[:10]),
            " ..." if len(filled) > 10 else "",
            grid.step,
        )
    merged = DecodedFrames(
        array=array,
        source_dtype=first.source_dtype,
        photometric=first.photometric,
        inverted=first.inverted,
        orientation=first.orientation,
        positions=positions,
        pixel_spacing=first.pixel_spacing,
        slice_spacing=grid.step if grid is not None else first.slice_spacing,
        window=first.window,
        rescale=first.rescale,
    )
    spacing = volume_spacing(merged, positions, folder)
    meta = dicom_meta(datasets, merged, positions)
    meta["number_of_frames"] = len(paths)
    meta["frame_order"] = None
    meta["files"] = [str(p) for p in paths]
    if grid is not None:
        meta["filled_slices"] = grid.filled
        meta["source_slices"] = [int(k) for k in grid.nearest]
    return LoadedImage(finite_float32(array, folder), spacing, meta, folder)
