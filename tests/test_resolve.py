"""resolve_models: presets and weights files -> loaded models; a pipeline over them is never
changed by its views or by settings given per call."""

from __future__ import annotations

import shutil
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch

from medrefine.checkpoint import read_info, save_weights
from medrefine.errors import ConfigError, InputError
from medrefine.models.denoiser import Denoiser, DenoiserConfig
from medrefine.pipeline import RunSettings, SegmentationPipeline
from medrefine.postprocess import PostprocessConfig
from medrefine.presets import Preset, get_preset
from medrefine.refine import RefineParams
from medrefine.resolve import PipelineModels, resolve_models


@pytest.fixture
def preset_folder(tiny_weights, tmp_path, monkeypatch):
    """Every preset's folder is one holding the tiny coarse model and refiner, and a fixer
    (the refiner's weights re-seeded, with other defaults)."""
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
    return folder


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).random((40, 48, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def given() -> np.ndarray:
    mask = np.zeros((40, 48), np.uint8)
    mask[10:30, 12:36] = 1
    return mask


def test_a_preset_resolves_to_its_files_and_defaults(preset_folder):
    models = resolve_models(preset="skin", device="cpu")
    skin = get_preset("skin")
    assert models.preset is skin and models.coarse_paths == (preset_folder / "coarse.safetensors",)
    assert models.refiner_path == preset_folder / "refiner.safetensors"
    assert models.fixer_path == preset_folder / "fixer.safetensors"
    assert models.postprocess == skin.postprocess and models.tta == skin.tta
    assert models.preset_coarse and models.backend["name"] == "torch"
    assert "fixer" not in vars(models)  # the fixer loads on first use, once
    assert models.fixer is models.fixer and models.fixer.defaults.strength == 0.6


def test_weights_files_resolve_without_a_preset(tiny_weights):
    models = resolve_models(tiny_weights["coarse"], tiny_weights["refiner"], device="cpu")
    assert models.preset is None and models.fixer_path is None and models.fixer is None
    assert models.coarse_paths == (tiny_weights["coarse"],)
    assert models.refiner_path == tiny_weights["refiner"]
    assert models.postprocess == PostprocessConfig() and models.tta == ()
    alone = resolve_models(None, tiny_weights["refiner"], load_coarse=False, device="cpu")
    assert alone.coarse is None and alone.pre_cfg == alone.refiner.pre_cfg
    coarse_only = resolve_models(tiny_weights["coarse"], use_diffusion=False, device="cpu")
    assert coarse_only.refiner is None and coarse_only.refiner_path is None


def test_a_missing_or_foreign_file_is_one_error_naming_it(tiny_weights, tmp_path, monkeypatch):
    missing = tmp_path / "none.safetensors"
    with pytest.raises(InputError, match="none.safetensors: weights file not found"):
        resolve_models(missing, tiny_weights["refiner"])
    with pytest.raises(InputError, match="holds a 'refiner' model, not a coarse segmentation"):
        resolve_models(tiny_weights["refiner"], tiny_weights["refiner"])
    with pytest.raises(InputError, match="holds a 'coarse' model, not a diffusion refiner"):
        resolve_models(tiny_weights["coarse"], tiny_weights["coarse"])
    monkeypatch.setattr(Preset, "folder", property(lambda self: tmp_path / "empty"))
    with pytest.raises(InputError, match="preset 'skin' is not fully installed: .*not found"):
        resolve_models(preset="skin")


def test_a_refiner_of_another_grid_is_refused(tiny_weights, tmp_path):
    info = read_info(tiny_weights["refiner"])
    info["preprocess"] = {**info["preprocess"], "size": [48, 48]}
    other = save_weights(tmp_path / "refiner_48.safetensors",
                         Denoiser(DenoiserConfig.from_dict(info["denoiser"])), info)
    with pytest.raises(ConfigError, match="refiner_48.safetensors: .* size \\[48, 48\\] but "
                                          "the coarse model coarse.safetensors uses"):
        resolve_models(tiny_weights["coarse"], other)


def test_bad_backends_and_settings_fail_before_any_model_loads(tiny_weights):
    with pytest.raises(ConfigError, match="unknown backend"):
        resolve_models(tiny_weights["coarse"], backend="tensorrt")
    with pytest.raises(ConfigError, match="need backend='onnx'"):
        resolve_models(tiny_weights["coarse"], quantized=True)
    with pytest.raises(ConfigError, match="unknown setting"):
        RunSettings(refine={"strenght": 0.5})
    with pytest.raises(ConfigError, match="slice_batch"):
        RunSettings(slice_batch=0)
    with pytest.raises(ConfigError, match="needs the diffusion refiner"):
        PipelineModels(None, None)


def test_from_models_shares_the_models_of_a_pipeline(tiny_weights, image):
    models = resolve_models(tiny_weights["coarse"], tiny_weights["refiner"], device="cpu")
    pipe = SegmentationPipeline.from_models(models)
    built = SegmentationPipeline(tiny_weights["coarse"], tiny_weights["refiner"], device="cpu")
    assert pipe.coarse is models.coarse and pipe.refiner is models.refiner
    np.testing.assert_array_equal(pipe.run(image).refined_probs, built.run(image).refined_probs)
    assert pipe.provenance() == built.provenance()


def test_settings_per_call_give_what_fresh_pipelines_give_and_change_nothing(
    tiny_weights, image, given
):
    pipe = SegmentationPipeline(tiny_weights["coarse"], tiny_weights["refiner"], device="cpu")
    before = (pipe.settings, pipe.refine_params, pipe.post, pipe.slice_batch, pipe.provenance())
    post = PostprocessConfig(threshold=0.3, fill_holes=True)
    params = replace(pipe.refine_params, steps=1, seed=3)
    first = pipe.run(image, coarse_mask=given, refine=params, postprocess=post)
    second = pipe.run(image, coarse_mask=given, refine={"strength": 0.6, "samples": 1})
    fresh_first = SegmentationPipeline(tiny_weights["coarse"], tiny_weights["refiner"],
                                       device="cpu", refine=params, postprocess=post)
    fresh_second = SegmentationPipeline(tiny_weights["coarse"], tiny_weights["refiner"],
                                        device="cpu", refine={"strength": 0.6, "samples": 1})
    for got, fresh in ((first, fresh_first), (second, fresh_second)):
        expected = fresh.run(image, coarse_mask=given)
        np.testing.assert_array_equal(got.mask, expected.mask)
        np.testing.assert_array_equal(got.refined_probs, expected.refined_probs)
        assert got.params == expected.params
    assert first.params["refine"] == asdict(params) and first.params["postprocess"] == asdict(post)
    assert second.params["refine"]["strength"] == 0.6 and second.params["refine"]["steps"] == 2
    assert (pipe.settings, pipe.refine_params, pipe.post, pipe.slice_batch,
            pipe.provenance()) == before
    with pytest.raises(AttributeError):
        pipe.refine_params = params  # a built pipeline is not changed
    other = pipe.with_settings(postprocess=post)
    assert other.post == post and pipe.post == PostprocessConfig()
    assert other.coarse is pipe.coarse and other.refiner is pipe.refiner


def test_the_fixer_is_a_view_that_leaves_the_pipeline_as_it_was(preset_folder, image, given):
    pipe = SegmentationPipeline(preset="polyp", device="cpu", refine={"samples": 2})
    before = (pipe.refiner, pipe.refiner_path, pipe.refine_params, pipe.settings)
    fixer = pipe.fixer()
    assert fixer is not pipe and fixer.fixer() is fixer
    assert fixer.refiner_path == preset_folder / "fixer.safetensors"
    assert fixer.coarse is pipe.coarse and fixer.post == pipe.post
    # the fixer's defaults, with the pipeline's changes on top of them
    assert (fixer.refine_params.strength, fixer.refine_params.samples) == (0.6, 2)
    assert (pipe.refiner, pipe.refiner_path, pipe.refine_params, pipe.settings) == before
    fresh = SegmentationPipeline(preset_folder / "coarse.safetensors",
                                 preset_folder / "fixer.safetensors", device="cpu",
                                 refine={"samples": 2}, postprocess=pipe.post)
    np.testing.assert_array_equal(pipe.run(image, coarse_mask=given).mask,
                                  fresh.run(image, coarse_mask=given).mask)
    assert pipe.run(image).params["refine"] == asdict(before[2])  # own masks: the refiner
    assert RefineParams(**read_info(preset_folder / "refiner.safetensors")["refine_defaults"]
                        ).strength == before[2].strength
