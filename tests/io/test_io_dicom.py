"""DICOM reading: the ten sample files, compressed transfer syntaxes, series folders, bad files."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, RLELossless

from medrefine.errors import InputError, UnsupportedFormatError
from medrefine.io import load_mask, read_image, read_mask

# name: (array shape, modality, photometric)
SAMPLES = {
    "693_UNCI.dcm": ((1, 512, 512), "CT", "MONOCHROME2"),
    "CT_small.dcm": ((1, 128, 128), "CT", "MONOCHROME2"),
    "MR2_UNCI.dcm": ((1, 1024, 1024), "MR", "MONOCHROME2"),
    "MR_small.dcm": ((1, 64, 64), "MR", "MONOCHROME2"),
    "RG3_UNCR.dcm": ((1, 1760, 1760), "CR", "MONOCHROME1"),
    "US1_UNCR.dcm": ((3, 480, 640), "US", "RGB"),
    "eCT_Supplemental.dcm": ((1, 2, 512, 512), "CT", "MONOCHROME2"),
    "emri_small.dcm": ((1, 10, 64, 64), "MR", "MONOCHROME2"),
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_sample_images(dicom_dir: Path, name: str) -> None:
    shape, modality, photometric = SAMPLES[name]
    image = read_image(dicom_dir / name)
    assert image.array.shape == shape and image.array.dtype == np.float32
    meta = image.meta
    assert meta["format"] == "dicom" and meta["modality"] == modality
    assert meta["photometric"] == photometric
    ds = pydicom.dcmread(dicom_dir / name, stop_before_pixels=True)
    assert meta["study_instance_uid"] == ds.StudyInstanceUID
    assert meta["series_instance_uid"] == ds.SeriesInstanceUID
    assert meta["sop_instance_uids"] == [ds.SOPInstanceUID]
    assert len(meta["source_datasets"]) == 1
    assert "PixelData" not in meta["source_datasets"][0]  # headers only, no second pixel copy
    if image.spacing is not None:
        assert len(image.spacing) == len(shape) - 1


def test_ct_is_in_hounsfield_units(dicom_dir: Path) -> None:
    image = read_image(dicom_dir / "CT_small.dcm")
    stored = pydicom.dcmread(dicom_dir / "CT_small.dcm").pixel_array
    np.testing.assert_array_equal(image.array[0], stored.astype(np.float32) - 1024)
    assert -1100 < image.array.min() < -500 and 500 < image.array.max() < 3100  # air .. bone
    assert image.meta["rescale_intercept"] == -1024 and image.meta["rescale_slope"] == 1
    assert image.spacing == pytest.approx((0.661468, 0.661468))


def test_window_is_kept(dicom_dir: Path) -> None:
    meta = read_image(dicom_dir / "693_UNCI.dcm").meta
    assert (meta["window_center"], meta["window_width"]) == (40.0, 100.0)
    meta = read_image(dicom_dir / "eCT_Supplemental.dcm").meta  # from the functional groups
    assert (meta["window_center"], meta["window_width"]) == (49.0, 102.0)


def test_enhanced_ct_frames_sorted_along_normal(dicom_dir: Path) -> None:
    image = read_image(dicom_dir / "eCT_Supplemental.dcm")
    stored = pydicom.dcmread(dicom_dir / "eCT_Supplemental.dcm").pixel_array  # (2, 512, 512)
    order = image.meta["frame_order"]
    assert order == [1, 0]  # frame 2 lies lower along the normal (0, 0, -1)
    np.testing.assert_array_equal(image.array[0], stored[order].astype(np.float32) - 1024)
    assert image.spacing == pytest.approx((10.0, 0.388672, 0.388672))
    assert image.meta["number_of_frames"] == 2


def test_monochrome1_is_inverted(dicom_dir: Path) -> None:
    image = read_image(dicom_dir / "RG3_UNCR.dcm")
    ds = pydicom.dcmread(dicom_dir / "RG3_UNCR.dcm")
    max_stored = 2 ** int(ds.BitsStored) - 1
    np.testing.assert_array_equal(image.array[0], max_stored - ds.pixel_array.astype(np.float32))
    assert image.meta["inverted"] is True
    assert image.meta["window_center"] == max_stored - 550.0


def test_ultrasound_is_rgb(dicom_dir: Path) -> None:
    image = read_image(dicom_dir / "US1_UNCR.dcm")
    rgb = pydicom.dcmread(dicom_dir / "US1_UNCR.dcm").pixel_array  # (H, W, 3)
    np.testing.assert_array_equal(image.array, np.moveaxis(rgb, -1, 0).astype(np.float32))


def test_liver_seg_reads_as_mask(dicom_dir: Path) -> None:
    mask = read_mask(dicom_dir / "liver.dcm")
    assert mask.dtype == np.uint8 and mask.shape == (3, 512, 512)
    assert set(np.unique(mask)) == {0, 1}
    loaded = load_mask(dicom_dir / "liver.dcm")
    assert loaded.meta["segment_labels"] == {1: "Liver"}
    assert loaded.spacing == pytest.approx((1.0, 0.810547, 0.810547))
    with pytest.raises(UnsupportedFormatError, match="DICOM-SEG"):
        read_image(dicom_dir / "liver.dcm")


def test_rtstruct_gives_clear_error(dicom_dir: Path) -> None:
    with pytest.raises(UnsupportedFormatError, match="RTSTRUCT holds contours, not pixels"):
        read_image(dicom_dir / "rtstruct.dcm")


# ----------------------------------------------------------------------- content, not suffix
def test_dicom_without_suffix_and_without_preamble(dicom_dir: Path, tmp_path: Path) -> None:
    shutil.copy(dicom_dir / "CT_small.dcm", tmp_path / "IM0001")
    assert read_image(tmp_path / "IM0001").meta["modality"] == "CT"
    raw = (dicom_dir / "CT_small.dcm").read_bytes()[132:]  # drop preamble + "DICM"
    (tmp_path / "raw.dcm").write_bytes(raw)
    assert read_image(tmp_path / "raw.dcm").array.shape == (1, 128, 128)


def test_text_named_dcm(tmp_path: Path) -> None:
    (tmp_path / "scan.dcm").write_text("patient notes, not an image\n" * 20)
    with pytest.raises(InputError, match=r"scan\.dcm.*not DICOM"):
        read_image(tmp_path / "scan.dcm")


def test_truncated_dicom(dicom_dir: Path, tmp_path: Path) -> None:
    data = (dicom_dir / "CT_small.dcm").read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut\.dcm.*(truncated|corrupt)"):
        read_image(tmp_path / "cut.dcm")


# -------------------------------------------------------------------- compressed transfer syntaxes
@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_lossless_compressed(dicom_dir: Path, tmp_path: Path, syntax) -> None:
    ds = pydicom.dcmread(dicom_dir / "CT_small.dcm")
    ds.compress(syntax)
    ds.save_as(tmp_path / "c.dcm")
    image = read_image(tmp_path / "c.dcm")
    assert image.meta["transfer_syntax"] == syntax.name
    np.testing.assert_array_equal(image.array, read_image(dicom_dir / "CT_small.dcm").array)


def test_jpeg_baseline_ybr_colour(dicom_dir: Path, tmp_path: Path) -> None:
    ds = pydicom.dcmread(dicom_dir / "US1_UNCR.dcm")
    rgb = ds.pixel_array[:64, :96].copy()
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=95)
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.save_as(tmp_path / "jpeg.dcm")
    image = read_image(tmp_path / "jpeg.dcm")
    assert image.array.shape == (3, 64, 96)
    assert np.abs(image.array - np.moveaxis(rgb, -1, 0)).mean() < 12  # RGB again, not YBR


# --------------------------------------------------------------------------------- series folders
def test_series_folder_sorted_by_position(dicom_dir: Path, tmp_path: Path, make_series) -> None:
    make_series(tmp_path / "series", dicom_dir / "CT_small.dcm")
    (tmp_path / "series" / "README.txt").write_text("not dicom")
    image = read_image(tmp_path / "series")
    assert image.array.shape == (1, 4, 128, 128)
    single = read_image(dicom_dir / "CT_small.dcm").array[0]
    for d in range(4):  # slice d carries +100*d
        np.testing.assert_array_equal(image.array[0, d], single + 100 * d)
    assert image.spacing == pytest.approx((2.5, 0.661468, 0.661468))
    assert [p[2] for p in image.meta["image_positions"]] == [0.0, 2.5, 5.0, 7.5]
    assert len(image.meta["source_datasets"]) == 4 and image.path == tmp_path / "series"


def test_series_folder_falls_back_to_instance_number(
    dicom_dir: Path, tmp_path: Path, make_series
) -> None:
    make_series(tmp_path / "series", dicom_dir / "CT_small.dcm", positions=False)
    image = read_image(tmp_path / "series")
    single = read_image(dicom_dir / "CT_small.dcm").array[0]
    np.testing.assert_array_equal(image.array[0, 3], single + 300)


def test_folder_with_two_series_is_refused(dicom_dir: Path, tmp_path: Path, make_series) -> None:
    make_series(tmp_path / "mixed", dicom_dir / "CT_small.dcm", n=2)
    shutil.copy(dicom_dir / "MR_small.dcm", tmp_path / "mixed" / "mr.dcm")
    with pytest.raises(InputError, match=r"2 DICOM series.*MR.*mr\.dcm"):
        read_image(tmp_path / "mixed")


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no DICOM image files"):
        read_image(tmp_path / "empty")


def test_slice_of_a_volume(dicom_dir: Path) -> None:
    image = read_image(dicom_dir / "emri_small.dcm", slice=3)
    assert image.array.shape == (1, 64, 64)
    assert image.meta["slice"] == 3 and image.meta["volume_shape"] == (10, 64, 64)
    with pytest.raises(InputError, match="outside"):
        read_image(dicom_dir / "emri_small.dcm", slice=10)


def test_dicom_named_png_is_read_as_dicom(dicom_dir: Path, tmp_path: Path) -> None:
    shutil.copy(dicom_dir / "CT_small.dcm", tmp_path / "misnamed.png")
    assert read_image(tmp_path / "misnamed.png").meta["format"] == "dicom"
