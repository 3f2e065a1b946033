"""SegmentationPipeline: the batched volume path agrees with the 2D path, seeds repeat."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest
import torch

from commands.conftest import disk_case
from medrefine.errors import ConfigError
from medrefine.io import LoadedImage
from medrefine.pipeline import SegmentationPipeline


@pytest.fixture(scope="module")
def pipe(tiny_weights) -> SegmentationPipeline:
    return SegmentationPipeline(tiny_weights["coarse"], tiny_weights["refiner"], device="cpu")


@pytest.fixture(scope="module")
def volume() -> LoadedImage:
    """(3, 5, 40, 48) uint8-range RGB slices with a disk each; spacing (2, 1, 1) mm."""
    rng = np.random.default_rng(1)
    slices = [disk_case(rng)[0] for _ in range(5)]  # (H, W, 3) each
    array = np.stack([np.moveaxis(s, -1, 0) for s in slices], axis=1).astype(np.float32)
    meta = {"format": "array", "source_dtype": "uint8", "modality": "OT"}
    return LoadedImage(array, (2.0, 1.0, 1.0), meta, None)


def test_volume_slices_match_2d_runs(pipe, volume):
    result = pipe.run(volume, slice_batch=2)  # 5 slices: batches of 2, 2 and 1
    assert result.mask.shape == result.uncertainty.shape == (5, 40, 48)
    assert result.coarse_probs.shape == result.refined_probs.shape == (5, 40, 48)
    assert result.review_score is not None and "review" in result.timings
    for d in range(5):
        one = pipe.run(volume.array[:, d].astype(np.uint8))  # the same slice as a 2D image
        np.testing.assert_allclose(result.coarse_probs[d], one.coarse_probs, atol=1e-5)
        np.testing.assert_allclose(result.refined_probs[d], one.refined_probs, atol=1e-5)
        np.testing.assert_allclose(result.uncertainty[d], one.uncertainty, atol=1e-5)


def test_slice_batch_does_not_change_the_mask(pipe, volume):
    single = pipe.run(volume, slice_batch=1)
    batched = pipe.run(volume, slice_batch=8)
    np.testing.assert_array_equal(single.mask, batched.mask)
    np.testing.assert_allclose(single.refined_probs, batched.refined_probs, atol=1e-5)


def test_same_seed_same_result(pipe, volume):
    first, second = pipe.run(volume, slice_batch=8), pipe.run(volume, slice_batch=8)
    np.testing.assert_array_equal(first.mask, second.mask)
    np.testing.assert_array_equal(first.refined_probs, second.refined_probs)
    np.testing.assert_array_equal(first.uncertainty, second.uncertainty)


def test_refining_a_given_volume_mask(pipe, volume):
    given = np.zeros(volume.spatial_shape, np.uint8)
    given[:, 10:30, 12:36] = 1
    result = pipe.run(volume, coarse_mask=given)
    assert result.mask.shape == given.shape and result.refined_probs is not None
    one = pipe.run(volume.array[:, 2].astype(np.uint8), coarse_mask=given[2])
    np.testing.assert_allclose(result.coarse_probs[2], one.coarse_probs, atol=1e-6)
    np.testing.assert_allclose(result.refined_probs[2], one.refined_probs, atol=1e-5)
    assert abs(float(result.coarse_probs.mean()) - float(given.mean())) < 0.01


def test_slice_batch_must_be_positive(tiny_weights):  # noqa: F811
    with pytest.raises(ConfigError, match="slice_batch"):
        SegmentationPipeline(
            tiny_weights["coarse"], use_diffusion=False, device="cpu", slice_batch=0
        )


def test_refine_only_pipeline_loads_no_coarse_model(tiny_weights):
    pipe = SegmentationPipeline.for_refinement(tiny_weights["refiner"], device="cpu")
    assert pipe.coarse is None and pipe.preset is None
    image = np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    mask = np.zeros((40, 48), np.uint8)
    mask[10:30, 10:30] = 1
    out = pipe.refine(image, mask)
    assert out.shape == (40, 48) and set(np.unique(out)) <= {0, 1}
    assert "coarse" not in pipe.provenance()["weights"]
    with pytest.raises(ConfigError, match="no coarse model"):
        pipe.segment_image(image)


def test_label_map_masks_count_every_label_as_foreground(pipe):
    image = np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    labels = np.zeros((40, 48), np.uint8)
    labels[5:20, 5:20], labels[22:35, 25:40] = 1, 2
    result = pipe.refine(image, labels, return_intermediate=True)
    coarse = result["coarse_probs"]  # the given mask, as the refiner saw it
    assert coarse[10, 10] > 0.5 and coarse[28, 30] > 0.5 and coarse[0, 0] < 0.5


def test_preset_is_none_when_every_weights_file_is_given(pipe):
    assert pipe.preset is None
    assert pipe.provenance()["preset"] is None


def test_a_preset_without_a_refiner_falls_back_to_coarse_with_a_warning(
    tmp_path, tiny_weights, monkeypatch, caplog
):
    import shutil

    from medrefine.presets import Preset

    shutil.copy(tiny_weights["coarse"], tmp_path / "coarse.safetensors")
    monkeypatch.setattr(Preset, "folder", property(lambda self: tmp_path))
    with caplog.at_level("WARNING"):
        pipe = SegmentationPipeline(preset="polyp", device="cpu")
    assert pipe.refiner is None and "ships no diffusion refiner" in caplog.text
    with pytest.raises(Exception, match="not found"):  # explicit refiner weights must exist
        SegmentationPipeline(preset="polyp", diffusion_weights=tmp_path / "none.safetensors")


def test_preset_with_a_separate_fixer_routes_prompts_to_it(tiny_weights, tmp_path, monkeypatch):
    """A preset that ships fixer.safetensors beside refiner.safetensors: ``segment`` runs the
    refiner on its coarse masks, given masks and boxes go to the fixer (with its defaults)."""
    import shutil

    import torch

    from medrefine.checkpoint import read_info, save_weights
    from medrefine.models.denoiser import Denoiser, DenoiserConfig
    from medrefine.presets import Preset
    from medrefine.refine import RefineParams

    folder = tmp_path / "preset"
    folder.mkdir()
    shutil.copy(tiny_weights["coarse"], folder / "coarse.safetensors")
    shutil.copy(tiny_weights["refiner"], folder / "refiner.safetensors")
    info = read_info(tiny_weights["refiner"])
    info["refine_defaults"] = {**info["refine_defaults"], "strength": 0.6, "samples": 1}
    torch.manual_seed(7)
    save_weights(folder / "fixer.safetensors",
                 Denoiser(DenoiserConfig.from_dict(info["denoiser"])), info)
    monkeypatch.setattr(Preset, "folder", property(lambda self: folder))
    pipe = SegmentationPipeline(preset="polyp")
    image = np.random.default_rng(0).random((40, 48, 3)).astype(np.float32)
    mask = np.zeros((40, 48), np.uint8)
    mask[10:30, 12:36] = 1
    fixer = SegmentationPipeline(tiny_weights["coarse"], folder / "fixer.safetensors",
                                 postprocess=pipe.post)
    expected = fixer.run(image, coarse_mask=mask)
    got = pipe.run(image, coarse_mask=mask)
    np.testing.assert_array_equal(got.mask, expected.mask)
    assert got.params["refine"]["strength"] == 0.6  # the fixer's defaults
    assert pipe.run(image).params["refine"] == asdict(RefineParams(**read_info(
        tiny_weights["refiner"])["refine_defaults"]))  # segment: the refiner's
    refine_only = SegmentationPipeline.for_refinement(preset="polyp")
    assert refine_only.refiner_path == folder / "fixer.safetensors"
    only_fixer = SegmentationPipeline.for_refinement(folder / "fixer.safetensors",
                                                     postprocess=pipe.post)
    boxes = refine_only.run(image, boxes=[(12, 10, 36, 30)], box_engine="refiner")
    np.testing.assert_array_equal(boxes.mask,
                                  only_fixer.run(image, boxes=[(12, 10, 36, 30)]).mask)
    assert boxes.params["boxes_from"] == "refiner"


def test_boxes_take_the_coarse_mask_inside_them_where_it_holds_the_object(tiny_weights,
                                                                           monkeypatch):
    pipe = SegmentationPipeline(tiny_weights["coarse"], tiny_weights["refiner"])
    image = np.random.default_rng(0).random((40, 48, 3)).astype(np.float32)
    blob = np.zeros((1, 40, 48), np.float32)
    blob[0, 12:28, 14:30] = 1.0  # the coarse model's object; another one outside the box
    blob[0, 2:6, 40:46] = 1.0
    monkeypatch.setattr(pipe.coarse, "predict", lambda *a, **k: blob)
    seen = {}
    real = pipe.refiner.refine_grid

    def spy(image01, probs, params=None, from_noise=False, own=False):
        seen.update(own=own, probs=probs.copy(), leave_alone=params.leave_alone)
        return real(image01, probs, params, from_noise, own)

    monkeypatch.setattr(pipe.refiner, "refine_grid", spy)
    out = pipe.run(image, boxes=[(10, 8, 34, 32)])
    assert out.params["boxes_from"] == "coarse model" and seen["own"] is True
    assert out.coarse_probs[4, 42] == 0 and out.coarse_probs[20, 20] == 1  # cut to the box
    empty = pipe.run(image, boxes=[(0, 30, 10, 40)])  # no coarse object in this box
    assert empty.params["boxes_from"] == "refiner" and seen["own"] is False
    assert seen["leave_alone"] is False  # a box prompt is never kept as the answer


def test_given_masks_and_boxes_take_a_second_opinion_from_the_coarse_model(tiny_weights,
                                                                          monkeypatch):
    pipe = SegmentationPipeline(tiny_weights["coarse"], tiny_weights["refiner"])
    image = np.random.default_rng(0).random((40, 48, 3)).astype(np.float32)
    blob = np.zeros((1, 40, 48), np.float32)
    blob[0, 12:28, 14:30] = 1.0  # what the coarse model "sees"
    monkeypatch.setattr(pipe.coarse, "predict", lambda *a, **k: blob)
    given = np.zeros((40, 48), np.uint8)
    given[0:10, 0:10] = 1  # another tool's mask, elsewhere
    out = pipe.run(image, coarse_mask=given)
    review = out.params["review"]
    expected_dis = 1.0 - 2.0 * ((out.mask > 0) & (blob[0] > 0)).sum() / (
        (out.mask > 0).sum() + (blob[0] > 0).sum())
    assert review["second_opinion_disagreement"] == pytest.approx(expected_dis)
    assert out.review_score == pytest.approx(
        review["uncertainty"] + review["second_opinion_weight"] * expected_dis)
    assert out.review_score > review["uncertainty"]  # the masks disagree
    boxed = pipe.run(image, boxes=[(0, 30, 10, 40)])  # a box prompt: compared as well
    assert "review" in boxed.params
    own = pipe.run(image)  # segment: the mask is the coarse model's, no second opinion
    assert "review" not in own.params
    refine_only = SegmentationPipeline.for_refinement(tiny_weights["refiner"])
    assert "review" not in refine_only.run(image, coarse_mask=given).params  # no coarse model


def _second_coarse(tiny_weights, tmp_path, seed: int = 1, **pre_changes):
    """Another tiny coarse model of the same kind (other seeded weights) as a file."""
    from medrefine.checkpoint import read_info, save_weights
    from medrefine.models.registry import SegModelConfig, build_seg_model

    info = read_info(tiny_weights["coarse"])
    info = {**info, "preprocess": {**info["preprocess"], **pre_changes}}
    torch.manual_seed(seed)
    model = build_seg_model(SegModelConfig.from_dict(info["model"]))
    return save_weights(tmp_path / f"coarse_{seed}.safetensors", model, info)


def test_several_coarse_files_run_as_an_ensemble_that_averages_probabilities(
    tiny_weights, tmp_path, volume
):
    from medrefine.inference import CoarseEnsemble, CoarseSegmenter

    other = _second_coarse(tiny_weights, tmp_path)
    ens = SegmentationPipeline([tiny_weights["coarse"], other], use_diffusion=False,
                               device="cpu")
    assert isinstance(ens.coarse, CoarseEnsemble)
    image = volume.array[:, 0]
    singles = [CoarseSegmenter.from_weights(w, "cpu", fold_bn=True).predict(image, "uint8")
               for w in (tiny_weights["coarse"], other)]
    np.testing.assert_allclose(ens.coarse.predict(image, "uint8"), np.mean(singles, 0),
                               atol=1e-6)
    assert not np.allclose(singles[0], singles[1])  # the members do differ
    members = ens.provenance()["weights"]["coarse"]["ensemble"]
    assert [m["path"] for m in members] == [str(tiny_weights["coarse"]), str(other)]


def test_an_ensemble_refuses_members_of_another_grid(tiny_weights, tmp_path):
    other = _second_coarse(tiny_weights, tmp_path, size=[48, 48])
    with pytest.raises(ConfigError, match="coarse_1.safetensors: its preprocessing differs"):
        SegmentationPipeline([tiny_weights["coarse"], other], use_diffusion=False, device="cpu")


def test_a_preset_folder_with_numbered_coarse_files_runs_them_all(tiny_weights, tmp_path,
                                                                   monkeypatch):
    import shutil

    from medrefine.presets import Preset, get_preset

    for name in ("coarse.safetensors", "coarse_2.safetensors", "coarse_10.safetensors"):
        shutil.copy(tiny_weights["coarse"], tmp_path / name)
    monkeypatch.setattr(Preset, "folder", property(lambda self: tmp_path))
    assert [p.name for p in get_preset("chest").coarse_members] == [
        "coarse.safetensors", "coarse_2.safetensors", "coarse_10.safetensors"]
    pipe = SegmentationPipeline(preset="chest", use_diffusion=False, device="cpu")
    assert len(pipe.coarse.members) == 3


def test_a_multi_class_preset_segments_without_refinement_unless_a_refiner_is_forced(
    tiny_weights, tmp_path, monkeypatch
):
    """``segment --preset chest`` (a label map) must not need ``--no-refine``; an explicit
    refiner on a multi-class model is still refused."""
    from medrefine.checkpoint import read_info, save_weights
    from medrefine.models.registry import SegModelConfig, build_seg_model
    from medrefine.presets import Preset

    info = read_info(tiny_weights["coarse"])
    model_cfg = SegModelConfig.from_dict({**info["model"], "num_classes": 3})
    info = {**info, "model": model_cfg.to_dict(), "class_names": ["a", "b", "c"]}
    save_weights(tmp_path / "coarse.safetensors", build_seg_model(model_cfg), info)
    monkeypatch.setattr(Preset, "folder", property(lambda self: tmp_path))
    pipe = SegmentationPipeline(preset="chest", device="cpu")
    assert pipe.refiner is None
    labels = pipe.run(np.zeros((3, 40, 48), np.float32)).mask
    assert labels.shape == (40, 48) and labels.max() <= 3
    with pytest.raises(ConfigError, match="needs a binary coarse model"):
        SegmentationPipeline(preset="chest", diffusion_weights=tiny_weights["refiner"],
                             device="cpu")


def test_hu_lung_gate_keeps_labels_near_the_lungs_only():
    """A CT in HU: labels farther than the margin from the HU lung mask (air-density lung
    inside the body) are dropped, e.g. "lung" a chest-only model finds in the abdomen; an
    8-bit picture or another modality is not gated."""
    from medrefine.io import LoadedImage
    from medrefine.pipeline import hu_lung_gate, is_hu_ct

    depth, size = 20, 64
    yy, xx = np.mgrid[:size, :size]
    body = (yy - 32) ** 2 + (xx - 32) ** 2 <= 28 ** 2
    lungs = ((yy - 30) ** 2 + (xx - 20) ** 2 <= 8 ** 2) | (
        (yy - 30) ** 2 + (xx - 44) ** 2 <= 8 ** 2)
    hu = np.full((depth, size, size), -1000.0, np.float32)
    hu[:, body] = 20.0
    hu[:10, lungs] = -850.0  # the chest: slices 0-9; the abdomen below
    loaded = LoadedImage(hu[None], (5.0, 2.0, 2.0), {"format": "nifti", "modality": "CT",
                                                     "source_dtype": "int16"}, None)
    assert is_hu_ct(loaded)
    labels = np.where(body, 1, 0).astype(np.uint8)[None].repeat(depth, 0)
    gated, report = hu_lung_gate(labels, loaded, 20.0)
    assert report["margin_mm"] == 20.0 and report["lung_voxels"] > 0
    assert gated[:10][:, lungs].all()  # the lungs themselves stay
    assert not gated[14:].any()  # over 20 mm below the last lung slice: all dropped
    assert labels[5, 6, 32] and not gated[5, 6, 32]  # in the chest, 37 mm from either lung
    assert report["removed_voxels"] == int(labels.sum() - gated.sum())
    picture = LoadedImage(np.clip(hu + 1000, 0, 255)[None], (5.0, 2.0, 2.0),
                          {"format": "png", "source_dtype": "uint8"}, None)
    assert not is_hu_ct(picture)
    mr = LoadedImage(hu[None], (5.0, 2.0, 2.0), {"modality": "MR", "source_dtype": "int16"},
                     None)
    assert not is_hu_ct(mr)


def test_a_given_mask_kept_by_the_refiner_is_the_input_to_the_pixel(tiny_weights):
    from medrefine.refine import RefineParams

    pipe = SegmentationPipeline.for_refinement(tiny_weights["refiner"], device="cpu")
    rng = np.random.default_rng(0)
    image = rng.random((3, 53, 71)).astype(np.float32)  # not the 32 x 32 grid's aspect
    given = np.zeros((53, 71), np.uint8)
    given[10:40, 7] = 1  # a one-pixel line the grid's round trip would blur away
    given[20:30, 30:60] = 1
    kept = pipe.run(image, coarse_mask=given, refine=RefineParams(steps=1, keep_input=True))
    np.testing.assert_array_equal(kept.mask, given)
    np.testing.assert_array_equal(kept.coarse_mask, given)
    meta = {"format": "array", "source_dtype": "float32", "modality": "OT"}
    volume = LoadedImage((rng.random((3, 3, 53, 71)) * 255).astype(np.float32), (2.0, 1.0, 1.0),
                         meta, None)
    stack = np.stack([given, given[::-1], given[:, ::-1]])
    kept = pipe.run(volume, coarse_mask=stack, refine=RefineParams(steps=1, keep_input=True))
    np.testing.assert_array_equal(kept.mask, stack)
