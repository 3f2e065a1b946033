"""What ``medrefine inpaint`` writes: the inpainted image as PNG at the input's bit depth, a
before | mask | after panel, and for a DICOM input a derived DICOM with new UIDs. Each file
carries ``SYNTHETIC_NOTE``: a PNG text chunk, DICOM ImageComments and DerivationDescription."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from medrefine.errors import InputError
from medrefine.inpaint.pipeline import SYNTHETIC_NOTE, InpaintingPipeline, InpaintResult
from medrefine.io import atomic_output


def write_png(image: np.ndarray, path: Path) -> tuple[Path, int]:
    """uint8 -> 8-bit PNG, other integers -> 16-bit PNG (values as stored), float -> 16-bit
    PNG of the image's own min..max. Returns (path, bit depth)."""
    if image.dtype == np.uint8:
        pic, depth = Image.fromarray(image, mode="L"), 8
    else:
        if np.issubdtype(image.dtype, np.integer) and image.min() >= 0 and image.max() <= 65535:
            array16 = image.astype(np.uint16)
        else:
            lo, hi = float(image.min()), float(image.max())
            array16 = np.round((image - lo) / max(hi - lo, 1e-12) * 65535).astype(np.uint16)
        pic, depth = Image.fromarray(array16), 16
    info = PngInfo()
    info.add_text("Description", SYNTHETIC_NOTE)
    info.add_text("Software", "medrefine inpaint")
    with atomic_output(path) as tmp:
        pic.save(tmp, format="PNG", pnginfo=info)
    return path, depth


def display01(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, [0.5, 99.5])
    return np.clip((image.astype(np.float32) - lo) / max(hi - lo, 1e-6), 0, 1)


def write_compare(result: InpaintResult, path: Path) -> Path:
    """before | mask (on the image) | after, with titles; the after tile is labelled."""
    from medrefine.visualize import comparison_panel, save_png

    lo, hi = np.percentile(result.image, [0.5, 99.5])
    after = np.clip((result.inpainted.astype(np.float32) - lo) / max(hi - lo, 1e-6), 0, 1)
    after_rgb = np.repeat((after * 255).round().astype(np.uint8)[..., None], 3, 2)
    panel = comparison_panel(display01(result.image), {"mask": result.mask,
                                                       "after (synthetic)": after_rgb},
                             image_title="before")
    return save_png(panel, path)


def inpaint_dicom(pipe: InpaintingPipeline, path: Path, mask: np.ndarray, out: Path):
    """Inpaint the stored pixel values of a single-frame grey DICOM and write a derived copy:
    ImageType DERIVED\\SECONDARY, new SOP Instance and Series UIDs, the synthetic note in
    ImageComments and DerivationDescription. Returns (InpaintResult, path written)."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = pydicom.dcmread(str(path))
    if int(ds.get("NumberOfFrames", 1) or 1) != 1 or int(ds.get("SamplesPerPixel", 1)) != 1:
        raise InputError(f"{path}: inpainting writes single-frame grey DICOM only")
    stored = ds.pixel_array
    invert = str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1"
    result = pipe.run(stored, mask, invert=invert)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PixelData = np.ascontiguousarray(result.inpainted.astype(stored.dtype)).tobytes()
    ds.ImageType = ["DERIVED", "SECONDARY", "INPAINTED"]
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = int(ds.get("SeriesNumber", 0) or 0) + 1000
    ds.SeriesDescription = f"{ds.get('SeriesDescription', '')} inpainted (synthetic)".strip()
    ds.DerivationDescription = SYNTHETIC_NOTE[:1024]
    ds.ImageComments = SYNTHETIC_NOTE
    ds.BurnedInAnnotation = "NO"
    with atomic_output(out) as tmp:
        ds.save_as(str(tmp), enforce_file_format=True)
    return result, out
