"""The files the app reads and writes: uploads read as images (one slice of a volume), the
ground truth, pictures for the browser, the single tab's downloads and the batch's masks and
zip. Everything written goes into the session's request folder."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from medrefine.app.session import Session
from medrefine.errors import InputError
from medrefine.io import OUTPUT_FORMATS, LoadedImage, atomic_output, load_mask, read_image
from medrefine.io.formats import by_display, mask_formats
from medrefine.pipeline import SegmentationResult, replace_range
from medrefine.visualize import PALETTE, overlay, save_png

# the mask download's formats: shown name -> (format, file suffix), from ``medrefine.io.formats``
MASK_FORMATS = {f.display: (f.name, f.download_suffix) for f in mask_formats("dicom")}
COARSE_COLOR, REFINED_COLOR = PALETTE[0], PALETTE[1]  # orange, sky blue


# ---------------------------------------------------------------- reading
def read_upload(image_file: str | None, slice_index: float | None) -> LoadedImage:
    """The uploaded image; of a volume, the slice ``slice_index`` (chosen with the slider)."""
    if not image_file:
        raise InputError("no image uploaded; upload an image or pick an example")
    loaded = read_image(image_file)
    if loaded.is_volume:  # one slice of a volume, chosen with the slider
        loaded = read_image(image_file, slice=int(slice_index or 0))
    return loaded


def ground_truth(gt_file: str, loaded: LoadedImage) -> np.ndarray:
    """The uploaded ground-truth mask as bool, on ``loaded``'s grid (its slice of a volume)."""
    gt = load_mask(gt_file).mask
    if "slice" in loaded.meta and gt.shape == tuple(loaded.meta["volume_shape"]):
        gt = gt[loaded.meta["slice"]]
    if gt.shape != loaded.spatial_shape:
        raise InputError(
            f"the ground-truth mask is {gt.shape} but the image is "
            f"{loaded.spatial_shape}; upload the mask of this image"
        )
    return gt > 0


# ---------------------------------------------------------------- pictures
def display_image01(loaded: LoadedImage) -> np.ndarray:
    """(1|3, H, W) in [0, 1] (raw units rescaled as preprocessing does)."""
    return replace_range(loaded.array, loaded.meta.get("source_dtype", "float32"))


def to_rgb(image01: np.ndarray) -> np.ndarray:
    """(1|3, H, W) in [0, 1] -> uint8 (H, W, 3)."""
    rgb = np.repeat(image01, 3, axis=0) if image01.shape[0] == 1 else image01[:3]
    return np.rint(np.clip(np.moveaxis(rgb, 0, -1), 0, 1) * 255).astype(np.uint8)


# ---------------------------------------------------------------- writing
def write_downloads(session: Session, mask_format: str) -> tuple[Path, Path]:
    """The last result's mask in ``mask_format`` and its overlay, in the request folder."""
    outcome = session.last
    if outcome is None or session.request is None:
        raise InputError("nothing to download yet; segment an image first")
    spec = by_display(mask_format if mask_format in MASK_FORMATS else "PNG")
    result = outcome.result
    why = spec.refusal(result.image.meta.get("format"))
    if why is not None:
        others = " or ".join(f.display for f in mask_formats())
        raise InputError(f"{spec.display} {why}; download the mask as {others}")
    mask_path = spec.write(
        result.mask, session.request / f"{outcome.stem}{spec.download_suffix}", like=result.image
    )
    picture = overlay(outcome.image01, result.mask > 0, color=REFINED_COLOR)
    overlay_path = save_png(picture, session.request / f"{outcome.stem}_overlay.png",
                            compress_level=1)
    return mask_path, overlay_path


def write_batch_masks(result: SegmentationResult, stem: str, out: Path) -> list[str]:
    """One batch file's masks in ``out``: PNG for 2D, NIfTI for volumes, plus DICOM-SEG for
    DICOM inputs; returns their names."""
    image = result.image
    specs = [OUTPUT_FORMATS["nifti" if image.is_volume else "png"]]
    specs += [f for f in mask_formats(image.meta.get("format")) if f.needs_input is not None]
    return [
        spec.write(result.mask, out / f"{stem}{spec.zip_suffix}", like=image).name for spec in specs
    ]


def write_batch_zip(zip_path: Path, report: dict[str, Any], masks: Path) -> Path:
    """``report.json`` and the masks in ``masks`` (under ``masks/``) zipped, atomically."""
    with atomic_output(zip_path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("report.json", json.dumps(report, indent=2, default=str) + "\n")
        for mask in sorted(masks.iterdir()):
            zf.write(mask, f"masks/{mask.name}")
    return zip_path
