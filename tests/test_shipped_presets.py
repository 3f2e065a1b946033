"""The shipped presets as a user gets them: every coarse file of each preset (an ensemble's
members included) loads, and the coarse model segments the preset's own sample image."""

from __future__ import annotations

import numpy as np
import pytest

from medrefine.checkpoint import read_info
from medrefine.io import read_image
from medrefine.pipeline import SegmentationPipeline
from medrefine.presets import PRESETS, sample_path

SHIPPED = [name for name, p in PRESETS.items() if p.coarse_weights.is_file()]
# ct-lung-infection's lungs on example_ct_sm (HU) against TotalSegmentator's lobes: measured
# 0.817 with the preset's 20 mm HU lung gate (0.428 without it)
LUNG_DICE_HU = 0.75


@pytest.mark.parametrize("name", SHIPPED)
def test_every_coarse_member_loads_and_segments_the_sample(name):
    preset = PRESETS[name]
    infos = [read_info(p) for p in preset.coarse_members]
    assert all(i["kind"] == "coarse" for i in infos)
    assert len({str(i["preprocess"]) for i in infos}) == 1  # one grid for every member
    pipe = SegmentationPipeline(preset=name, use_diffusion=False, device="cpu")
    image = read_image(sample_path(name))
    mask = pipe.run(image).mask
    assert mask.shape == image.spatial_shape
    if pipe.coarse.model_cfg.num_classes == 1:
        assert mask.any() and not mask.all()
    else:  # a label map: each class found on the sample
        labels = set(np.unique(mask).tolist())
        assert labels == set(range(pipe.coarse.model_cfg.num_classes + 1))


def test_the_chest_preset_is_the_full_model_and_five_folds():
    members = PRESETS["chest"].coarse_members
    assert [p.name for p in members] == ["coarse.safetensors"] + [
        f"coarse_{k}.safetensors" for k in range(2, 7)]
    folds = [read_info(p)["training"] for p in members[1:]]
    assert sorted(f["cv_fold"] for f in folds) == [0, 1, 2, 3, 4]
    assert {f["cv_folds"] for f in folds} == {5}


def test_a_label_maps_dicom_seg_names_its_segments_as_the_model_does(data_dir, tmp_path):
    """A multi-class preset's DICOM-SEG segments carry the class names its weights store, not
    "Label 1", "Label 2", ..."""
    import pydicom

    from medrefine.cli import main

    out = tmp_path / "seg"
    assert main(["segment", str(data_dir / "dicom_samples" / "CT_small.dcm"), "-o", str(out),
                 "--preset", "chest", "--no-refine", "--format", "dicom-seg"]) == 0
    seg = pydicom.dcmread(out / "CT_small.dcm")
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["right_lung", "left_lung", "heart"]


@pytest.mark.skipif("ct-lung-infection" not in SHIPPED, reason="ct-lung-infection not shipped")
def test_a_ct_in_hounsfield_units_gets_the_training_slices_look(ct_hu, tmp_path):
    """The CT preset was trained on 8-bit slices its source made by per-slice min-max and
    CLAHE; a NIfTI in HU gets that recipe (``norm: minmax-clahe``), so the lungs land where
    the reference labels put them (TotalSegmentator's lung lobes of example_ct_sm, lung
    bases), and a DICOM series gives a DICOM-SEG with the two segments."""
    from medrefine.cli import main
    from medrefine.metrics import dice

    ct = ct_hu
    pipe = SegmentationPipeline(preset="ct-lung-infection", use_diffusion=False, device="cpu")
    image = read_image(ct / "example_ct_sm.nii.gz")
    labels = pipe.run(image).mask
    reference = read_image(ct / "example_ct_sm_lung_lobes.nii.gz").array[0] > 0
    assert labels.shape == reference.shape and set(np.unique(labels)) <= {0, 1, 2}
    assert dice(labels > 0, reference) > LUNG_DICE_HU
    out = tmp_path / "seg"
    assert main(["segment", str(ct / "dicom_series"), "-o", str(out), "--preset",
                 "ct-lung-infection", "--format", "dicom-seg,nifti"]) == 0
    import pydicom

    seg = pydicom.dcmread(out / "dicom_series.dcm")
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["lung", "infection"]
