"""HU normalisation, the CT checks and the HU lung mask against the reference lung labels."""

from __future__ import annotations

import numpy as np
import pytest

from medrefine.errors import InputError
from medrefine.io import LoadedImage, read_image
from medrefine.lungpath.hu import check_8bit, check_hu, hu_from_normalised, normalise_hu
from medrefine.lungpath.lungmask import (
    MaskConfig,
    check_has_lung,
    hu_lung_mask,
    intensity_lung_mask,
    lung_coverage,
    lung_volume_ml,
)
from medrefine.metrics import dice


def test_normalisation_is_the_papers_formula():
    hu = np.array([-1000, -850, -300, 400, 3000, -2000], np.float32)
    x = normalise_hu(hu)
    np.testing.assert_allclose(x, [-1.0, 150 / 700 - 1, 0.0, 1.0, 1.0, -1.0], atol=1e-6)
    np.testing.assert_allclose(hu_from_normalised(x[:4]), hu[:4], atol=1e-3)


def test_hu_lung_mask_matches_the_reference_lung_labels(ct_hu):
    image = read_image(ct_hu / "example_ct_sm.nii.gz")
    ref = read_image(ct_hu / "example_ct_sm_lung_lobes.nii.gz").array[0] > 0
    mask = hu_lung_mask(check_hu(image), image.spacing)
    # measured 0.958; bowel gas (the biggest air pocket of this abdominal scan) must be out
    assert dice(mask, ref) > 0.9
    assert abs(mask.sum() / ref.sum() - 1) < 0.15


def test_gas_and_outside_air_are_not_lung(ct_hu):
    image = read_image(ct_hu / "example_ct.nii.gz")
    hu = check_hu(image)
    pelvis = hu[:30]  # the scan's lower 30 slices (pelvis, bowel gas): no lung
    assert (hu[:30] < -320).sum() > 10_000  # plenty of air (outside and bowel) to mistake
    mask = hu_lung_mask(pelvis, image.spacing)
    assert lung_volume_ml(mask, image.spacing) < MaskConfig().min_lung_ml
    with pytest.raises(InputError, match="no lung found"):
        check_has_lung(mask, image.spacing, MaskConfig(), "x")
    full = hu_lung_mask(hu, image.spacing)  # the whole scan: its lung bases are found
    assert lung_volume_ml(full, image.spacing) > 50


def test_dicom_series_lung_base_is_found(ct_hu):
    image = read_image(ct_hu / "dicom_series")
    mask = hu_lung_mask(check_hu(image), image.spacing)
    ml = lung_volume_ml(mask, image.spacing)
    assert 0.5 <= ml < 5  # a sliver of right lung base (posterior recess), stomach gas out
    ys, xs = np.nonzero(mask.any(axis=0))
    assert ys.mean() > 300  # posterior (rows run anterior -> posterior)


def test_2d_hu_slice_drops_small_pockets(ct_hu):
    image = read_image(ct_hu / "example_ct_sm.nii.gz")
    hu = check_hu(image)[29]
    mask = hu_lung_mask(hu, image.spacing[1:])
    ref = read_image(ct_hu / "example_ct_sm_lung_lobes.nii.gz").array[0, 29] > 0
    assert dice(mask, ref) > 0.85


def _loaded(array, **meta):
    meta = {"format": "nifti", "source_dtype": "float32", "modality": "OT", **meta}
    return LoadedImage(np.asarray(array, np.float32)[None], (1.0, 1.0), meta, None)


def test_8bit_image_passed_as_hu_is_refused():
    picture = np.random.default_rng(0).integers(0, 256, (64, 64))
    with pytest.raises(InputError, match="8-bit picture"):
        check_hu(_loaded(picture, source_dtype="uint8", format="png"))


def test_non_ct_images_are_refused(data_root):
    with pytest.raises(InputError, match="MR image, not CT"):
        check_hu(read_image(data_root / "dicom_samples" / "MR_small.dcm"))
    mri = read_image(
        data_root / "mni152_nifti" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    )
    with pytest.raises(InputError, match="not Hounsfield"):
        check_hu(mri)
    soft = np.full((64, 64), 40.0)  # all soft tissue, no air: not a chest CT
    soft[0, 0] = -100
    with pytest.raises(InputError, match="not CT in Hounsfield units"):
        check_hu(_loaded(soft))


def test_rank_mode_refuses_hu():
    hu = np.full((32, 32), -800.0)
    with pytest.raises(InputError, match="not 8-bit"):
        check_8bit(_loaded(hu))


def test_intensity_lung_mask_on_8bit_slices(data_root):
    """The rank mode's own mask against the provided lung masks of the Ma et al. slices."""
    from medrefine.lungpath.data import load_slices

    slices = load_slices(data_root / "covid_ct_lung_infection_ma", "test", limit=40)[::8]
    scores = [dice(intensity_lung_mask(s.image8), s.lung) for s in slices if s.lung.sum() > 2000]
    assert len(scores) >= 3
    assert np.median(scores) > 0.8


def _lungs(depth: int, radius_mm: float, spacing=(2.5, 1.0, 1.0)) -> np.ndarray:
    """Two ellipsoid 'lungs' in a volume of ``depth`` slices, centred in z."""
    dz, dy, dx = spacing
    z, y, x = np.ogrid[:depth, :256, :256]
    zc = (depth - 1) / 2
    mask = np.zeros((depth, 256, 256), bool)
    for xc in (70, 186):
        mask |= (((z - zc) * dz / (2 * radius_mm)) ** 2 + ((y - 128) * dy / radius_mm) ** 2
                 + ((x - xc) * dx / (radius_mm / 1.6)) ** 2) <= 1
    return mask


def test_coverage_of_whole_lungs_cut_lungs_and_slivers():
    cfg, spacing = MaskConfig(), (2.5, 1.0, 1.0)
    whole = _lungs(160, 90.0)  # 2 x 3.8 L, the apex and base inside the scan range
    assert lung_volume_ml(whole, spacing) > cfg.full_lung_ml
    assert lung_coverage(whole, spacing, cfg)["partial"] is False
    cut = whole[40:100]  # the middle of the chest only: over 1 L, but cut off at both ends
    report = lung_coverage(cut, spacing, cfg)
    assert report["partial"] and len(report["reasons"]) == 2
    assert "first slice" in report["reasons"][0] and "last slice" in report["reasons"][1]
    sliver = _lungs(40, 12.0)  # 2 x 9 mL, inside the range but far from whole lungs
    report = lung_coverage(sliver, spacing, cfg)
    assert report["partial"] and report["reasons"] == [
        f"{lung_volume_ml(sliver, spacing):.1f} mL of lung, under the 1000 mL of whole lungs"]
    assert lung_coverage(whole[80], spacing[1:], cfg)["scope"] == "single slice"
