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
