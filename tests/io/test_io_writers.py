"""Mask and image writers: PNG, NIfTI, DICOM-SEG (read back with highdicom), atomic writes."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pytest
from PIL import Image

import medrefine
from medrefine.errors import ConfigError, InputError
from medrefine.io import (
    LoadedImage,
    load_mask,
    read_image,
    read_mask,
    write_image_png,
    write_mask,
)
from medrefine.io.base import atomic_output


def _blob(shape: tuple[int, ...]) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    index = tuple(slice(n // 4, n // 2) for n in shape)
    mask[index] = 1
    return mask


# ----------------------------------------------------------------------------------------- PNG
def test_png_binary_and_labels(tmp_path: Path) -> None:
    like = LoadedImage(np.zeros((3, 20, 30), np.float32), None, {"format": "png"})
    mask = _blob((20, 30))
    out = write_mask(mask.astype(bool), tmp_path / "a" / "b" / "mask.png", like=like)
    stored = np.asarray(Image.open(out))
    assert stored.dtype == np.uint8 and set(np.unique(stored)) == {0, 255}  # binary -> 0/255
    np.testing.assert_array_equal(read_mask(out), mask)  # and back to 0/1
    labels = mask + (np.arange(30)[None] > 25).astype(np.uint8) * 2
    out = write_mask(labels, tmp_path / "labels.png")
    np.testing.assert_array_equal(np.asarray(Image.open(out)), labels)  # values kept
    np.testing.assert_array_equal(read_mask(out), labels)


def test_mask_checks(tmp_path: Path) -> None:
    like = LoadedImage(np.zeros((1, 20, 30), np.float32), None, {"format": "png"})
    with pytest.raises(InputError, match="differs from the input"):
        write_mask(np.zeros((20, 31), np.uint8), tmp_path / "m.png", like=like)
    with pytest.raises(InputError, match="fractional"):
        write_mask(np.full((20, 30), 0.5), tmp_path / "m.png")
    with pytest.raises(InputError, match="PNG holds one 2D mask"):
        write_mask(np.zeros((2, 20, 30), np.uint8), tmp_path / "m.png")
    with pytest.raises(ConfigError, match="suffix"):
        write_mask(np.zeros((20, 30), np.uint8), tmp_path / "m.xyz")
    with pytest.raises(ConfigError, match="does not fit"):
        write_mask(np.zeros((20, 30), np.uint8), tmp_path / "m.png", format="nifti")
    assert list(tmp_path.iterdir()) == []


def test_write_image_png(tmp_path: Path) -> None:
    image01 = np.linspace(0, 1, 3 * 8 * 10, dtype=np.float32).reshape(3, 8, 10)
    out = write_image_png(image01, tmp_path / "img.png")
    back = read_image(out)
    np.testing.assert_array_equal(back.array, np.round(image01 * 255))
    gray16 = np.arange(80, dtype=np.uint16).reshape(8, 10) * 800
    np.testing.assert_array_equal(
        read_image(write_image_png(gray16, tmp_path / "g.png")).array[0], gray16
    )
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        write_image_png(image01 * 2, tmp_path / "bad.png")


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash while writing")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


# --------------------------------------------------------------------------------------- NIfTI
def test_nifti_mask_without_nifti_source(tmp_path: Path) -> None:
    like = LoadedImage(np.zeros((1, 4, 20, 30), np.float32), (2.0, 0.5, 0.7), {"format": "tiff"})
    mask = _blob((4, 20, 30))
    out = write_mask(mask, tmp_path / "m.nii.gz", like=like)
    assert nib.load(out).header.get_zooms() == pytest.approx((0.7, 0.5, 2.0))
    back = read_image(out)
    np.testing.assert_array_equal(back.array[0], mask)  # same orientation when read again
    assert back.spacing == pytest.approx((2.0, 0.5, 0.7))


def test_nifti_from_dicom_series_has_patient_geometry(
    dicom_dir: Path, tmp_path: Path, make_series
) -> None:
    make_series(tmp_path / "series", dicom_dir / "CT_small.dcm")
    image = read_image(tmp_path / "series")
    out = write_mask(_blob(image.spatial_shape), tmp_path / "m.nii.gz", like=image)
    affine = nib.load(out).affine
    ds = image.meta["source_datasets"][0]
    origin_ras = np.array([-1, -1, 1]) * np.asarray([float(v) for v in ds.ImagePositionPatient])
    np.testing.assert_allclose(affine[:3, 3], origin_ras)
    np.testing.assert_allclose(np.sqrt((affine[:3, :3] ** 2).sum(0)), (0.661468, 0.661468, 2.5))


# ----------------------------------------------------------------------------------- DICOM-SEG
def _check_seg(path: Path, source: LoadedImage, mask: np.ndarray) -> hd.seg.Segmentation:
    seg = hd.seg.segread(path)
    referenced = {u[2] for u in seg.get_source_image_uids()}
    assert referenced == set(source.meta["sop_instance_uids"])
    assert seg.SegmentationType == "BINARY"
    description = seg.get_segment_description(1)
    assert description.segment_label == "lesion"
    algorithm = description.algorithm_identification
    assert algorithm[0].AlgorithmName == "medrefine"
    assert algorithm[0].AlgorithmVersion == medrefine.__version__
    np.testing.assert_array_equal(load_mask(path, like=source).mask, mask)  # by source UID
    np.testing.assert_array_equal(read_mask(path), mask)  # by its own geometry
    return seg


def test_dicom_seg_single_frame(dicom_dir: Path, tmp_path: Path) -> None:
    image = read_image(dicom_dir / "CT_small.dcm")
    mask = _blob((128, 128))
    out = write_mask(mask, tmp_path / "seg" / "ct_seg.dcm", like=image, label_names=["lesion"])
    _check_seg(out, image, mask)


def test_dicom_seg_multi_frame(dicom_dir: Path, tmp_path: Path) -> None:
    image = read_image(dicom_dir / "eCT_Supplemental.dcm")
    mask = np.zeros((2, 512, 512), np.uint8)
    mask[0, 10:50, 10:60] = 1  # only D slice 0 (stored frame 2) is marked
    out = write_mask(mask, tmp_path / "ect_seg.dcm", like=image, label_names=["lesion"])
    seg = _check_seg(out, image, mask)
    frame = seg.get_pixels_by_source_frame(
        image.meta["sop_instance_uids"][0], [2], combine_segments=True
    )
    assert frame.sum() == mask.sum()  # the mark went to the right stored frame


def test_dicom_seg_series_with_labels(dicom_dir: Path, tmp_path: Path, make_series) -> None:
    make_series(tmp_path / "series", dicom_dir / "CT_small.dcm")
    image = read_image(tmp_path / "series")
    mask = _blob(image.spatial_shape)
    mask[3, :5, :5] = 2
    out = write_mask(mask, tmp_path / "labels.dcm", like=image, label_names=["lesion", "vessel"])
    seg = hd.seg.segread(out)
    assert seg.number_of_segments == 2
    np.testing.assert_array_equal(load_mask(out, like=image).mask, mask)
    np.testing.assert_array_equal(read_mask(out), mask)
    with pytest.raises(ConfigError, match="label names"):
        write_mask(mask, tmp_path / "x.dcm", like=image, label_names=["only one"])


def test_dicom_seg_needs_dicom_source(tmp_path: Path) -> None:
    like = LoadedImage(np.zeros((1, 8, 8), np.float32), None, {"format": "png"})
    with pytest.raises(ConfigError, match="DICOM source"):
        write_mask(np.zeros((8, 8), np.uint8), tmp_path / "m.dcm", like=like)
    with pytest.raises(ConfigError, match="like="):
        write_mask(np.zeros((8, 8), np.uint8), tmp_path / "m.dcm")


def test_dicom_seg_for_one_slice_of_a_volume(dicom_dir: Path, tmp_path: Path) -> None:
    image = read_image(dicom_dir / "eCT_Supplemental.dcm", slice=1)
    mask = _blob((512, 512))
    out = write_mask(mask, tmp_path / "one.dcm", like=image, label_names=["lesion"])
    np.testing.assert_array_equal(load_mask(out, like=image).mask, mask)
    volume = read_mask(out)
    assert volume.shape == (2, 512, 512) and volume[0].sum() == 0
    np.testing.assert_array_equal(volume[1], mask)


def test_failed_dicom_seg_leaves_no_file(dicom_dir: Path, tmp_path: Path) -> None:
    image = read_image(dicom_dir / "emri_small.dcm")  # no frame of reference: highdicom refuses
    with pytest.raises(InputError, match=r"emri\.dcm.*cannot build a DICOM-SEG"):
        write_mask(_blob(image.spatial_shape), tmp_path / "emri.dcm", like=image)
    assert list(tmp_path.iterdir()) == []
