"""DICOM-SEG: write a label map that references its source CT/MR instances, and read one back.

Built on highdicom (``hd.seg.Segmentation``, ``hd.seg.segread``), which takes care of the
geometry (plane positions, orientation, spacing) copied from the source datasets that
``read_dicom``/``read_dicom_folder`` keep in ``meta["source_datasets"]``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medrefine.errors import ConfigError, InputError, UnsupportedFormatError
from medrefine.io.base import LoadedImage, LoadedMask, atomic_output

logger = logging.getLogger(__name__)


def write_dicom_seg(
    mask: np.ndarray,
    path: Path,
    like: LoadedImage,
    *,
    label_names: Sequence[str] | None = None,
    algorithm_name: str = "medrefine",
    algorithm_version: str | None = None,
    series_description: str = "medrefine segmentation",
) -> Path:
    """Write a BINARY DICOM-SEG with one segment per label value 1..max(mask).

    Args:
        mask: uint8 label map on the source grid, (H, W) or (D, H, W) as
            ``like.spatial_shape`` (already checked by ``write_mask``).
        path: output ``.dcm`` file (written atomically).
        like: the DICOM image the mask was computed from (keeps the source datasets).
        label_names: one name per label value 1..K; default "Foreground" / "Label k". Every
            named label gets a segment, also one that is empty in this mask.
        algorithm_name, algorithm_version: stored in each segment's algorithm identification
            (version defaults to ``medrefine.__version__``).
        series_description: SeriesDescription of the new SEG series.

    Returns:
        ``path``.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from medrefine import __version__

    datasets = like.meta.get("source_datasets")
    if like.meta.get("format") != "dicom" or not datasets:
        raise ConfigError(
            f"{path}: a DICOM-SEG needs a DICOM source image to reference, got "
            f"{like.meta.get('format')!r}; write .nii.gz or .png instead"
        )
    n_labels = max(int(mask.max()), len(label_names) if label_names else 0)  # named: kept
    names = (
        list(label_names)
        if label_names
        else (["Foreground"] if n_labels <= 1 else [f"Label {k}" for k in range(1, n_labels + 1)])
    )
    if len(names) < max(n_labels, 1):
        raise ConfigError(
            f"{path}: mask has labels 1..{n_labels} but only {len(names)} label "
            "names were given; give one name per label"
        )
    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name,
        version=algorithm_version or __version__,
        family=codes.DCM.ArtificialIntelligence,
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=k,
            segment_label=names[k - 1][:64],
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for k in range(1, max(n_labels, 1) + 1)
    ]
    pixels = _source_frame_order(mask, like, path)
    try:
        seg = hd.seg.Segmentation(
            source_images=datasets,
            pixel_array=pixels,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=int(datasets[0].get("SeriesNumber", 0) or 0) + 1000,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="medrefine",
            manufacturer_model_name=algorithm_name,
            software_versions=__version__,
            device_serial_number="0",
            omit_empty_frames=False,  # keep every frame so the SEG alone spans the volume
        )
    except Exception as err:  # highdicom raises ValueError/TypeError/AttributeError on bad input
        raise InputError(
            f"{path}: cannot build a DICOM-SEG for {like.path} "
            f"({type(err).__name__}: {err}); write the mask as .nii.gz instead"
        ) from err
    seg.SeriesDescription = series_description[:64]
    with atomic_output(path) as tmp:
        seg.save_as(tmp)
    return path


def _source_frame_order(mask: np.ndarray, like: LoadedImage, path: Path) -> np.ndarray:
    """Mask in the order highdicom expects: one frame per source instance or stored frame."""
    meta = like.meta
    if meta.get("slice") is not None:  # one slice of a volume was segmented: embed it
        full = np.zeros(tuple(meta["volume_shape"]), np.uint8)
        full[int(meta["slice"])] = mask
        mask = full
    n_datasets = len(meta["source_datasets"])
    planes = meta.get("source_slices")
    if planes and mask.ndim == 3:  # a series read on a grid (allow_gaps), shape checked
        logger.info(
            "%s: planes %s have no source slice (filled by interpolation); not in the SEG",
            path,
            meta.get("filled_slices"),
        )
        return mask[np.asarray(planes)]  # one frame per source slice, in D order
    if n_datasets > 1:  # a series: datasets are already in D order
        if mask.ndim != 3 or mask.shape[0] != n_datasets:
            raise InputError(
                f"{path}: mask shape {mask.shape} does not match the "
                f"{n_datasets}-slice source series"
            )
        return mask
    order = meta.get("frame_order")
    if mask.ndim == 3 and order and len(order) == mask.shape[0]:
        stored = np.empty_like(mask)
        stored[np.asarray(order)] = mask  # D slice d holds stored frame order[d]
        return stored
    return mask


def read_dicom_seg(path: Path, like: LoadedImage | None = None) -> LoadedMask:
    """Read a DICOM-SEG as a uint8 label map (segment numbers as labels; 0 background).

    Args:
        path: the SEG file.
        like: the DICOM image it segments, if at hand; the label map then matches
            ``like.spatial_shape`` slice for slice (frames found by SOP Instance UID).

    Returns:
        LoadedMask with mask (H, W) or (D, H, W); without ``like`` the slices are sorted along
        the slice normal as ``read_dicom`` sorts image frames, and span only the planes the SEG
        stores (SEGs written elsewhere may omit empty frames; ours keep them all).
    """
    import highdicom as hd

    from medrefine.io.dicom import open_dicom

    path = Path(path)
    ds = open_dicom(path)
    try:
        seg = hd.seg.Segmentation.from_dataset(ds, copy=False)
    except Exception as err:
        raise InputError(
            f"{path}: not a valid DICOM-SEG ({type(err).__name__}: {err}); check the file"
        ) from err
    if seg.number_of_segments > 255:
        raise UnsupportedFormatError(
            f"{path}: {seg.number_of_segments} segments do not fit a "
            "uint8 label map; split the segmentation"
        )
    try:
        if like is not None and like.meta.get("format") == "dicom":
            mask, spacing = _by_source(seg, like), like.spacing
            if like.meta.get("slice") is not None:  # like is one slice of the volume
                mask = mask[int(like.meta["slice"])][None]
        else:
            mask, spacing = _by_geometry(seg, path)
    except InputError:
        raise
    except Exception as err:
        raise InputError(
            f"{path}: cannot assemble the DICOM-SEG frames ({type(err).__name__}: "
            f"{err}); pass the source image as like= to match frames by UID"
        ) from err
    if mask.ndim == 3 and mask.shape[0] == 1 and (like is None or not like.is_volume):
        mask = mask[0]
        spacing = spacing[1:] if spacing is not None and len(spacing) == 3 else spacing
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    try:
        meta = {
            "format": "dicom-seg",
            "source_dtype": "bool" if int(seg.BitsAllocated) == 1 else f"uint{seg.BitsAllocated}",
            "modality": "SEG",
            "labels": [int(v) for v in np.unique(mask) if v],
            "segment_labels": {
                int(d.SegmentNumber): str(d.SegmentLabel) for d in seg.SegmentSequence
            },
            "segmentation_type": str(seg.SegmentationType),
            "referenced_sop_instance_uids": [u[2] for u in seg.get_source_image_uids()],
            # UIDs a damaged or hand-made SEG may lack: facts for `medrefine info`, not needed
            "study_instance_uid": str(seg.get("StudyInstanceUID", "")) or None,
            "series_instance_uid": str(seg.get("SeriesInstanceUID", "")) or None,
            "sop_instance_uids": [str(seg.get("SOPInstanceUID", ""))],
            "number_of_frames": int(seg.get("NumberOfFrames", 1) or 1),
        }
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise InputError(
            f"{path}: DICOM-SEG header is incomplete ({type(err).__name__}: {err}); check the file"
        ) from err
    return LoadedMask(mask, spacing, meta, path)


def _by_source(seg, like: LoadedImage) -> np.ndarray:
    """(D, H, W) label map in ``like``'s slice order, frames matched by source UID/frame."""
    uids = like.meta["sop_instance_uids"]
    order = like.meta.get("frame_order")
    if len(uids) == 1 and order and len(order) > 1:  # multi-frame source
        return seg.get_pixels_by_source_frame(
            uids[0],
            source_frame_numbers=[int(i) + 1 for i in order],
            combine_segments=True,
            dtype=np.uint8,
        )
    frames = seg.get_pixels_by_source_instance(uids, combine_segments=True, dtype=np.uint8)
    planes = like.meta.get("source_slices")
    if planes:  # a series read on a grid (allow_gaps): filled planes stay 0
        depth = tuple(like.meta.get("volume_shape") or like.spatial_shape)[0]  # D, also of a slice
        mask = np.zeros((depth, *frames.shape[1:]), np.uint8)
        mask[np.asarray(planes)] = frames
        return mask
    return frames


def _by_geometry(seg, path: Path) -> tuple[np.ndarray, tuple[float, ...] | None]:
    """(D, H, W) from the SEG's own plane positions, sorted along the slice normal."""
    try:
        volume = seg.get_volume(combine_segments=True, dtype=np.uint8)
    except Exception as err:  # no usable geometry (e.g. ultrasound): fall back to source order
        logger.debug("%s: get_volume failed (%s); ordering frames by source instance", path, err)
        uids = list(dict.fromkeys(u[2] for u in seg.get_source_image_uids()))
        mask = seg.get_pixels_by_source_instance(
            uids, combine_segments=True, dtype=np.uint8, ignore_spatial_locations=True
        )
        return mask, None
    mask = np.asarray(volume.array)
    affine = np.asarray(volume.affine, dtype=float)
    normal = np.cross(affine[:3, 2], affine[:3, 1])  # row direction x column direction
    if float(np.dot(affine[:3, 0], normal)) < 0:
        mask = mask[::-1]
    return mask, tuple(float(s) for s in volume.spacing)
