"""The second look over tiles (``medrefine.tiling``) and the pipeline's use of it where the own
mask of a 2D image is empty (``empty_rescue``): the tiles' layout, their probabilities mapped
back, the switch, report.json and the zoomed-in training views that go with it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from medrefine.cli import main
from medrefine.errors import ConfigError
from medrefine.pipeline import SegmentationPipeline
from medrefine.preprocess import PreprocessConfig, normalize_intensity
from medrefine.presets import DEFAULT_EMPTY_RESCUE, PRESETS, Preset
from medrefine.resolve import resolve_models
from medrefine.tiling import MIN_TILE_SIDE, check_tiles, tile_boxes, tiled_probs
from medrefine.training.data import AugmentConfig, augment_pair

# An ETIS-Larib frame (external validation, never trained on) whose small polyp the polyp
# preset's whole-frame view misses and its 3 x 3 tiles find (the model card's figures).
ETIS_MISSED = "external/etis_larib/images/105.png"


@pytest.fixture
def etis_frame(data_dir):
    image = data_dir / ETIS_MISSED
    if not image.is_file():
        pytest.skip(f"{image} not found (the external archives beside the data)")
    return image


class Identity:
    """A 'model' whose probability is the image's first channel on its grid."""

    def __init__(self, size: int = 32):
        self.pre_cfg = PreprocessConfig(size=(size, size), channels=1, norm="auto")
        self.batches: list[int] = []

    def predict_grid(self, image01, tta=()):
        self.batches.append(len(image01))
        return torch.as_tensor(np.asarray(image01)[:, :1])


@pytest.mark.parametrize(("shape", "n", "fraction"), [((300, 400), 3, 0.45), ((97, 131), 2, 0.6)])
def test_tiles_cover_the_frame_from_corner_to_corner(shape, n, fraction):
    boxes = tile_boxes(shape, n, fraction)
    assert len(boxes) == n * n
    covered = np.zeros(shape, int)
    for top, left, h, w in boxes:
        assert (h, w) == (round(shape[0] * fraction), round(shape[1] * fraction))
        covered[top:top + h, left:left + w] += 1
    assert covered.min() >= 1
    assert boxes[0][:2] == (0, 0)
    top, left, h, w = boxes[-1]
    assert (top + h, left + w) == shape


@pytest.mark.parametrize(("n", "fraction"), [(1, 0.9), (3, 0.3), (2, 1.0), (2, 0.0)])
def test_tiles_that_leave_the_frame_uncovered_are_refused(n, fraction):
    with pytest.raises(ConfigError, match="tiles"):
        check_tiles(n, fraction)


def test_tile_probabilities_map_back_to_their_pixels():
    rng = np.random.default_rng(0)
    image = np.kron(rng.integers(0, 256, (12, 16)), np.ones((20, 20))).astype(np.float32)[None]
    model = Identity(size=128)
    probs = tiled_probs(model, image, "uint8", n=3, fraction=0.45)
    assert probs.shape == (1, 240, 320) and model.batches == [9]  # one batch of all tiles
    error = np.abs(probs[0] - image[0] / 255)
    assert np.median(error) < 1e-3 and error.mean() < 0.02  # resampled at the blocks' edges


class BrightTiles:
    """A tile gate: 'an object' where the tile's mean intensity is above a level."""

    threshold = 0.5

    def __init__(self, level: float):
        self.level = level

    def probability(self, image01, tta=()):
        return float(image01.mean() > self.level)


def test_a_tile_gate_leaves_out_the_tiles_it_finds_empty():
    image = np.zeros((1, 300, 300), np.float32)
    image[:, 200:, 200:] = 255.0  # only the bottom-right tile is mostly bright
    probs = tiled_probs(Identity(size=64), image, "uint8", n=3, fraction=0.45,
                        gate=BrightTiles(0.5))
    assert probs[0, 250, 250] == pytest.approx(1.0, abs=1e-3)  # not averaged with dark tiles
    assert not probs[0, :150].any()  # only dark tiles there, all left out: 0
    assert probs[0, 220:, 220:].min() > 0.9  # the bright tile, unchanged
    assert not tiled_probs(Identity(size=64), image, "uint8", gate=BrightTiles(2.0)).any()


def test_tiles_share_the_whole_frames_normalisation():
    # 16-bit: the model's preprocessing stretches the frame's percentiles to [0, 1]; a tile cut
    # from the raw image and normalised alone would stretch its own range instead
    image = np.full((1, 300, 300), 1000.0, np.float32)
    image[:, :150] = 3000.0
    image[:, 150:, 150:] = 5000.0
    probs = tiled_probs(Identity(size=64), image, "uint16", n=3, fraction=0.45)
    frame01 = normalize_intensity(image, "percentile", source_dtype="uint16")
    assert np.median(np.abs(probs - frame01)) < 1e-3  # the blocks' edges are resampled
    # a tile wholly inside the 3000 block would be constant, so 0, if normalised alone
    assert probs[0, 50, 50] == pytest.approx(0.5, abs=1e-3)
    assert probs[0, 250, 50] == pytest.approx(0.0, abs=1e-3)
    assert probs[0, 250, 250] == pytest.approx(1.0, abs=1e-3)


def test_an_image_too_small_to_tile_is_left_to_the_whole_frame():
    side = int(MIN_TILE_SIDE / 0.45) - 2
    assert tiled_probs(Identity(), np.zeros((1, side, side), np.float32), "uint8") is None


def test_a_preset_empty_rescue_is_checked_and_segmentation_only():
    with pytest.raises(ConfigError, match="tiles"):
        Preset("x", "x", empty_rescue=(1, 0.5))
    with pytest.raises(ConfigError, match="empty_rescue"):
        Preset("x", "x", empty_rescue=(3, 0.45), task="inpainting")


def test_the_switch_resolves_per_preset_and_weights(tiny_weights):
    polyp = PRESETS["polyp"]
    own = resolve_models(preset="polyp", device="cpu", use_diffusion=False)
    assert own.empty_rescue == tuple(polyp.empty_rescue)
    off = resolve_models(preset="polyp", device="cpu", use_diffusion=False, empty_rescue="off")
    assert off.empty_rescue == ()
    weights = resolve_models(tiny_weights["coarse"], use_diffusion=False, device="cpu")
    assert weights.empty_rescue == ()  # auto: the preset's choice is for its own model only
    forced = resolve_models(tiny_weights["coarse"], use_diffusion=False, device="cpu",
                            empty_rescue=True)
    assert forced.empty_rescue == DEFAULT_EMPTY_RESCUE
    with pytest.raises(ConfigError, match="auto, on or off"):
        resolve_models(preset="polyp", device="cpu", use_diffusion=False, empty_rescue="yes")


def test_a_multi_class_model_is_not_rescued():
    with pytest.raises(ConfigError, match="binary"):
        resolve_models(preset="chest", device="cpu", empty_rescue="on")
    assert resolve_models(preset="chest", device="cpu").empty_rescue == ()


def test_the_tiles_find_the_small_polyp_the_whole_frame_misses(etis_frame):
    image = etis_frame
    off = SegmentationPipeline(preset="polyp", use_diffusion=False, empty_rescue="off",
                               device="cpu")
    missed = off.run(image)
    assert not missed.mask.any() and "empty_rescue" not in missed.params
    on = SegmentationPipeline(preset="polyp", use_diffusion=False, empty_rescue="on",
                              device="cpu")
    found = on.run(image)
    assert found.params["empty_rescue"] == {"tiles": 3, "tile_fraction": 0.45, "found": True}
    assert 0 < found.mask.mean() < 0.01 and "empty_rescue" in found.timings
    truth = np.asarray(Image.open(str(image).replace("images", "masks"))) > 127
    overlap = (found.mask > 0) & truth
    assert 2 * overlap.sum() / ((found.mask > 0).sum() + truth.sum()) > 0.7
    assert on.provenance()["empty_rescue"] == [3, 0.45]


def test_a_frame_with_a_mask_is_never_looked_at_again(data_dir):
    image = data_dir / "kvasir_seg" / "images" / "cju0qkwl35piu0993l0dewei2.jpg"
    pipe = SegmentationPipeline(preset="polyp", use_diffusion=False, empty_rescue="on",
                                device="cpu")
    result = pipe.run(image)
    assert result.mask.any() and "empty_rescue" not in result.params


@pytest.mark.parametrize("switch", ["on", "off"])
def test_segment_reports_the_second_look(etis_frame, tmp_path, switch):
    out = tmp_path / "out"
    assert main(["segment", str(etis_frame), "-o", str(out), "--preset", "polyp",
                 "--no-refine", "--device", "cpu", "--empty-rescue", switch]) == 0
    report = json.loads((out / "report.json").read_text())
    entry = report["files"][0]
    assert report["provenance"]["empty_rescue"] == ([3, 0.45] if switch == "on" else None)
    if switch == "on":
        assert entry["empty_rescue"]["found"] is True
    else:
        assert "empty_rescue" not in entry


def test_zoomed_training_views_move_image_and_mask_together_and_some_are_empty():
    image = np.zeros((3, 200, 200), np.float32)
    labels = np.zeros((200, 200), np.uint8)
    labels[40:80, 120:170] = 1
    image[:, 40:80, 120:170] = 1.0
    aug = AugmentConfig(rotate_deg=0, brightness=0, contrast=0, gamma=0, noise_std=0,
                        zoom_prob=1.0, zoom_scale=(2.0, 2.5))
    rng = np.random.default_rng(0)
    shares = []
    for _ in range(60):
        img, lab = augment_pair(image, labels, (64, 64), aug, rng)
        assert ((img[0] > 0.5) == (lab > 0)).mean() > 0.97
        shares.append(lab.mean())
    shares = np.array(shares)
    assert (shares == 0).mean() > 0.2  # views without the object: an empty mask
    assert shares.max() > 0.05 * 2.0 ** 2 * 0.5  # magnified: larger than in the frame (5%)


def test_zoom_settings_are_checked():
    with pytest.raises(ConfigError, match="zoom_prob"):
        AugmentConfig(zoom_prob=1.5)
    with pytest.raises(ConfigError, match="zoom_scale"):
        AugmentConfig(zoom_scale=(0.5, 2.0))
