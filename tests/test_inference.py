"""Test-time flips of the coarse model (``CoarseSegmenter.predict_grid(tta=...)``) and where the
pipeline takes them from: the API keyword, the preset, the weights' info."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medrefine.checkpoint import read_info, save_weights
from medrefine.errors import ConfigError
from medrefine.inference import CoarseEnsemble, CoarseSegmenter, check_tta, parse_tta
from medrefine.models.registry import SegModelConfig, build_seg_model
from medrefine.pipeline import SegmentationPipeline


@pytest.fixture
def image01() -> np.ndarray:
    """Two 32x32 RGB images on the tiny grid, neither symmetric, so every flip changes them."""
    return np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)


def _by_hand(seg: CoarseSegmenter, image01: np.ndarray, axes: list[tuple[int, ...]]):
    """The mean over the identity and each flip: each flipped image run on its own and its
    probabilities flipped back."""
    views = [seg.predict_grid(image01)]
    for dims in axes:
        flipped = np.ascontiguousarray(np.flip(image01, dims))
        views.append(seg.predict_grid(flipped).flip(dims))
    return torch.stack(views).mean(0)


def test_tta_off_gives_the_network_s_probabilities_exactly(tiny_weights, image01):
    seg = CoarseSegmenter.from_weights(tiny_weights["coarse"], "cpu", fold_bn=True)
    x = torch.from_numpy(image01).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        today = torch.sigmoid(seg.model(x).float())  # what predict_grid computed before TTA
    for off in ((), None, "none", ""):
        assert torch.equal(seg.predict_grid(image01, off), today)
    assert torch.equal(seg.predict_grid(image01), today)


@pytest.mark.parametrize(
    "tta, axes",
    [
        (("hflip",), [(-1,)]),
        (("vflip",), [(-2,)]),
        (("hflip", "vflip"), [(-1,), (-2,)]),
    ],
)
def test_tta_is_the_mean_of_the_flipped_predictions(tiny_weights, image01, tta, axes):
    seg = CoarseSegmenter.from_weights(tiny_weights["coarse"], "cpu", fold_bn=True)
    got = seg.predict_grid(image01, tta)
    assert got.shape == (2, 1, 32, 32)
    torch.testing.assert_close(got, _by_hand(seg, image01, axes), atol=1e-6, rtol=0)
    assert not torch.allclose(got, seg.predict_grid(image01), atol=1e-4)  # the flips count


def test_tta_of_an_ensemble_flips_every_member(tiny_weights, image01, tmp_path):
    info = read_info(tiny_weights["coarse"])
    torch.manual_seed(1)
    other = save_weights(
        tmp_path / "coarse_1.safetensors",
        build_seg_model(SegModelConfig.from_dict(info["model"])),
        info,
    )
    members = [CoarseSegmenter.from_weights(p, "cpu") for p in (tiny_weights["coarse"], other)]
    ens = CoarseEnsemble(members)
    expected = torch.stack([_by_hand(m, image01, [(-1,)]) for m in members]).mean(0)
    torch.testing.assert_close(ens.predict_grid(image01, ["hflip"]), expected, atol=1e-6, rtol=0)


def test_tta_settings_are_spelled_one_way_and_checked():
    assert parse_tta("vflip, hflip") == parse_tta(["hflip", "vflip"]) == ("hflip", "vflip")
    assert parse_tta("HFLIP") == ("hflip",)
    assert parse_tta("none") == parse_tta(None) == parse_tta([]) == ()
    with pytest.raises(ConfigError, match="unknown flip"):
        parse_tta("rot90")
    with pytest.raises(ConfigError, match="left/right classes"):
        check_tta(("hflip",), ["right_lung", "left_lung", "heart"])
    check_tta(("vflip",), ["right_lung", "left_lung", "heart"])  # up-down keeps the sides
    check_tta(("hflip",), ["foreground"])


def test_the_pipeline_takes_tta_from_its_keyword_else_the_weights_info(tiny_weights, tmp_path):
    image = np.random.default_rng(1).integers(0, 255, (3, 40, 48)).astype(np.uint8)
    off = SegmentationPipeline(tiny_weights["coarse"], use_diffusion=False, device="cpu")
    assert off.tta == () and off.provenance()["tta"] == []
    on = SegmentationPipeline(
        tiny_weights["coarse"], use_diffusion=False, device="cpu", tta="hflip"
    )
    assert on.tta == ("hflip",) and on.provenance()["tta"] == ["hflip"]
    seg = CoarseSegmenter.from_weights(tiny_weights["coarse"], "cpu", fold_bn=True)
    np.testing.assert_array_equal(off.run(image).coarse_probs, seg.predict(image, "uint8")[0])
    np.testing.assert_array_equal(
        on.run(image).coarse_probs, seg.predict(image, "uint8", ("hflip",))[0]
    )

    info = {**read_info(tiny_weights["coarse"]), "tta": ["vflip"]}
    torch.manual_seed(0)
    flagged = save_weights(
        tmp_path / "flagged.safetensors",
        build_seg_model(SegModelConfig.from_dict(info["model"])),
        info,
    )
    assert SegmentationPipeline(flagged, use_diffusion=False, device="cpu").tta == ("vflip",)
    assert SegmentationPipeline(flagged, use_diffusion=False, device="cpu", tta="none").tta == ()


def test_a_preset_s_tta_applies_to_its_own_coarse_model_only(tiny_weights, tmp_path, monkeypatch):
    import dataclasses
    import shutil

    from medrefine import presets

    shutil.copy(tiny_weights["coarse"], tmp_path / "coarse.safetensors")
    flipped = dataclasses.replace(presets.PRESETS["skin"], tta=("hflip",))
    monkeypatch.setitem(presets.PRESETS, "skin", flipped)
    monkeypatch.setattr(presets.Preset, "folder", property(lambda self: tmp_path))
    own = SegmentationPipeline(preset="skin", use_diffusion=False, device="cpu")
    assert own.tta == ("hflip",)
    other = SegmentationPipeline(
        tiny_weights["coarse"], preset="skin", use_diffusion=False, device="cpu"
    )
    assert other.tta == ()  # another coarse model: the preset's measurement is not about it


def test_shipped_presets_never_flip_a_left_right_model():
    from medrefine.presets import PRESETS

    assert "hflip" not in PRESETS["chest"].tta
    with pytest.raises(ConfigError, match="tta"):
        import dataclasses

        dataclasses.replace(PRESETS["polyp"], tta=("rot90",))
