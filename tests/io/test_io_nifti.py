"""NIfTI reading (axis order, spacing, slices, 2D/4D) and writing back on the input grid."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medrefine.errors import InputError, UnsupportedFormatError
from medrefine.io import read_image, read_mask, write_float_nifti, write_mask

RNG = np.random.default_rng(1)


def _save(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)
    return path


def test_mni_volume(mni_path: Path) -> None:
    image = read_image(mni_path)
    assert image.array.shape == (1, 189, 233, 197)  # (C, D=S, H=P, W=L) of a 197x233x189 RAS file
    assert image.spacing == pytest.approx((1.0, 1.0, 1.0))
    assert image.meta["format"] == "nifti" and image.meta["axcodes"] == "RAS"
    data = np.asarray(nib.load(mni_path).dataobj)
    # RAS -> LPS flips i and j; D is k.
    np.testing.assert_array_equal(image.array[0, 100], data[::-1, ::-1, 100].T)


def test_mni_mask_written_back_with_same_affine(mni_path: Path, tmp_path: Path) -> None:
    image = read_image(mni_path)
    mask = (image.array[0] > 100).astype(np.uint8)  # (D, H, W)
    out = write_mask(mask, tmp_path / "out" / "brain.nii.gz", like=image)
    written = nib.load(out)
    source = nib.load(mni_path)
    assert written.shape == source.shape
    np.testing.assert_array_equal(written.affine, source.affine)
    np.testing.assert_array_equal(np.asarray(written.dataobj), np.asarray(source.dataobj) > 100)
    assert written.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(read_mask(out), mask)


def test_mni_one_slice(mni_path: Path, tmp_path: Path) -> None:
    image = read_image(mni_path, slice=90)
    assert image.array.shape == (1, 233, 197) and image.spacing == pytest.approx((1.0, 1.0))
    mask = np.zeros((233, 197), np.uint8)
    mask[100:120, 50:60] = 1
    out = write_mask(mask, tmp_path / "slice.nii.gz", like=image)
    volume = read_mask(out)
    assert volume.shape == (189, 233, 197)
    np.testing.assert_array_equal(volume[90], mask)
    assert volume.sum() == mask.sum()


@pytest.mark.parametrize(
    "affine",
    [
        np.diag([2.0, 3.0, 4.0, 1.0]),  # RAS
        np.array([[0, 0, -2.0, 10], [-3.0, 0, 0, 5], [0, 4.0, 0, -7], [0, 0, 0, 1]]),  # permuted
        np.array([[0.9, 0.3, 0, 0], [-0.3, 0.9, 0, 0], [0, 0, -1.5, 0], [0, 0, 0, 1]]),
    ],  # oblique
)
def test_any_orientation_round_trips(tmp_path: Path, affine: np.ndarray) -> None:
    data = RNG.integers(0, 5, (6, 7, 8)).astype(np.int16)
    path = _save(tmp_path / "vol.nii.gz", data, affine)
    image = read_image(path)
    assert image.is_volume and image.array.shape[1:] != ()
    out = write_mask(image.array[0].astype(np.uint8), tmp_path / "mask.nii", like=image)
    written = nib.load(out)
    np.testing.assert_array_equal(np.asarray(written.dataobj), data)
    np.testing.assert_allclose(written.affine, affine)
    assert sorted(image.spacing) == pytest.approx(sorted(np.sqrt((affine[:3, :3] ** 2).sum(0))))


def test_2d_nifti(tmp_path: Path) -> None:
    data = RNG.random((12, 9)).astype(np.float32)
    image = read_image(_save(tmp_path / "flat.nii.gz", data))
    assert image.array.shape == (1, 9, 12)  # (C, H=j, W=i), flipped to L-P like the 3D case
    np.testing.assert_array_equal(image.array[0], data[::-1, ::-1].T)
    out = write_float_nifti(image.array[0], tmp_path / "prob.nii.gz", like=image)
    np.testing.assert_array_equal(nib.load(out).get_fdata(), data)


def test_4d_nifti_channels_and_limits(tmp_path: Path) -> None:
    data = RNG.random((5, 6, 7, 2)).astype(np.float32)
    image = read_image(_save(tmp_path / "two.nii.gz", data))
    assert image.array.shape == (2, 7, 6, 5)
    out = write_float_nifti(image.array, tmp_path / "probs.nii.gz", like=image)
    np.testing.assert_allclose(nib.load(out).get_fdata(), data)
    _save(tmp_path / "series.nii.gz", np.zeros((4, 4, 4, 40), np.float32))
    with pytest.raises(UnsupportedFormatError, match="time series"):
        read_image(tmp_path / "series.nii.gz")


def test_float_map_without_like(tmp_path: Path) -> None:
    probs = RNG.random((3, 8, 10)).astype(np.float32)  # (D, H, W)
    out = write_float_nifti(probs, tmp_path / "p.nii.gz")
    back = read_image(out)
    np.testing.assert_allclose(back.array[0], probs, rtol=1e-6)


def test_truncated_and_fake_nifti(tmp_path: Path) -> None:
    path = _save(tmp_path / "vol.nii.gz", RNG.random((20, 20, 20)).astype(np.float32))
    data = path.read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut\.nii\.gz"):
        read_image(tmp_path / "cut.nii.gz")
    (tmp_path / "fake.nii.gz").write_bytes(gzip.compress(b"hello world" * 100))
    with pytest.raises(InputError, match=r"fake\.nii\.gz.*not NIFTI"):
        read_image(tmp_path / "fake.nii.gz")


def test_nan_volume(tmp_path: Path) -> None:
    data = np.ones((4, 4, 4), np.float32)
    data[1, 1, 1] = np.inf
    with pytest.raises(InputError, match="NaN or infinite"):
        read_image(_save(tmp_path / "inf.nii", data))
