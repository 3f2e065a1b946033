"""Seed files for the reader fuzz harness: tiny files of every format medrefine reads, built
here with the libraries that write them, plus real files (the bundled samples and, when present,
``shared/data/dicom_samples``). Each seed is (bytes, suffix, how to finish the mutated bytes)."""

from __future__ import annotations

import gzip
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import tifffile
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

REPO = Path(__file__).resolve().parents[2]
SHARED_DICOM = REPO.parent / "shared" / "data" / "dicom_samples"
MAX_REAL_SEED = 1_100_000  # bytes: bigger real files slow every case down for little gain


@dataclass(frozen=True)
class Seed:
    name: str
    data: bytes
    suffix: str
    finish: Callable[[bytes], bytes] = bytes  # e.g. gzip the mutated NIfTI bytes


def _png(array: np.ndarray, **kw) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array, **kw).save(out, format="PNG")
    return out.getvalue()


def _pillow(array: np.ndarray, fmt: str) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format=fmt)
    return out.getvalue()


def _palette_png() -> bytes:
    img = Image.fromarray(np.arange(48, dtype=np.uint8).reshape(6, 8) % 3, mode="L").convert("P")
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def _png16_rgb() -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", (np.arange(6 * 8 * 3).reshape(6, 8, 3) * 900).astype(np.uint16))
    assert ok
    return buf.tobytes()


def _tiff(array: np.ndarray, **kw) -> bytes:
    out = io.BytesIO()
    tifffile.imwrite(out, array, **kw)
    return out.getvalue()


def uid(key: str) -> str:
    """A fixed UID per key, so the seeds (and the fuzz cases) are the same on every run."""
    return generate_uid(entropy_srcs=["medrefine-fuzz", key])


def ct_dataset(rows: int = 8, cols: int = 6, frames: int = 1, key: str = "ct") -> Dataset:
    """A small, complete CT image (explicit VR little endian, int16 with a rescale)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = uid(key)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid("study"), uid("series")
    ds.FrameOfReferenceUID = uid("frame of reference")
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Fuzz^Seed", "1", "", "O"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20260101", "120000", "", "1"
    ds.ReferringPhysicianName, ds.Manufacturer = "", "medrefine"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 1, 1
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0, 0, 0]
    ds.PixelSpacing, ds.SliceThickness = [0.7, 0.7], 2.5
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.WindowCenter, ds.WindowWidth = 40, 400
    if frames > 1:
        ds.NumberOfFrames = frames
    pixels = (np.arange(frames * rows * cols, dtype=np.int16) * 37).reshape(frames, rows, cols)
    ds.PixelData = pixels.tobytes()
    return ds


def _dicom_bytes(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _seg_bytes() -> bytes:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    source = pydicom.dcmread(io.BytesIO(_dicom_bytes(ct_dataset())))
    mask = np.zeros((8, 6), np.uint8)
    mask[2:5, 1:4] = 1
    algorithm = hd.AlgorithmIdentificationSequence(
        name="fuzz", version="1", family=codes.DCM.ArtificialIntelligence
    )
    seg = hd.seg.Segmentation(
        source_images=[source],
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[
            hd.seg.SegmentDescription(
                segment_number=1,
                segment_label="Foreground",
                segmented_property_category=codes.SCT.Tissue,
                segmented_property_type=codes.SCT.Tissue,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
            )
        ],
        series_instance_uid=uid("seg series"),
        series_number=2,
        sop_instance_uid=uid("seg instance"),
        instance_number=1,
        manufacturer="medrefine",
        manufacturer_model_name="fuzz",
        software_versions="1",
        device_serial_number="0",
    )
    out = io.BytesIO()
    seg.save_as(out)
    return out.getvalue()


def _nifti(shape: tuple[int, ...], nifti2: bool = False) -> bytes:
    data = (np.arange(int(np.prod(shape))) % 7).reshape(shape).astype(np.int16)
    affine = np.diag([0.9, 0.9, 2.0, 1.0])
    cls = nib.Nifti2Image if nifti2 else nib.Nifti1Image
    return cls(data, affine).to_bytes()


def build_seeds() -> list[Seed]:
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 255, (10, 12), dtype=np.uint8)
    rgb = rng.integers(0, 255, (10, 12, 3), dtype=np.uint8)
    seeds = [
        Seed("png-gray", _png(gray), ".png"),
        Seed("png-rgb", _png(rgb), ".png"),
        Seed("png-16bit-gray", _png(gray.astype(np.uint16) * 200), ".png"),
        Seed("png-16bit-rgb", _png16_rgb(), ".png"),
        Seed("png-palette", _palette_png(), ".png"),
        Seed("png-mask", _png((gray > 128).astype(np.uint8) * 255), ".png"),
        Seed("jpeg", _pillow(rgb, "JPEG"), ".jpg"),
        Seed("bmp", _pillow(rgb, "BMP"), ".bmp"),
        Seed("tiff-gray", _tiff(gray), ".tif"),
        Seed("tiff-float", _tiff(gray.astype(np.float32) / 7), ".tif"),
        Seed("tiff-stack", _tiff(np.stack([gray, gray, gray]), photometric="minisblack"), ".tif"),
        Seed("dicom-ct", _dicom_bytes(ct_dataset()), ".dcm"),
        Seed("dicom-multiframe", _dicom_bytes(ct_dataset(frames=3, key="mf")), ".dcm"),
        Seed("dicom-seg", _seg_bytes(), ".dcm"),
        Seed("nifti-3d", _nifti((6, 5, 4)), ".nii"),
        Seed("nifti-2d", _nifti((6, 5)), ".nii"),
        Seed("nifti2-3d", _nifti((4, 3, 2), nifti2=True), ".nii"),
        Seed("nifti-gz", _nifti((6, 5, 4)), ".nii.gz", gzip.compress),
    ]
    real = sorted((REPO / "src" / "medrefine" / "samples").glob("*.*"))
    if SHARED_DICOM.is_dir():
        real += sorted(SHARED_DICOM.glob("*.dcm"))
    for path in real:
        if path.suffix.lower() in (".jpg", ".png", ".dcm") and path.stat().st_size <= MAX_REAL_SEED:
            seeds.append(Seed(f"real-{path.stem}", path.read_bytes(), path.suffix.lower()))
    return seeds
