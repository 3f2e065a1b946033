"""End-to-end CPU smoke runs of the refiner training loop on top of the tiny coarse run."""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from medrefine.checkpoint import read_info
from medrefine.diffusion import DiffusionConfig
from medrefine.errors import ConfigError
from medrefine.models.denoiser import DenoiserConfig
from medrefine.refine import RefineParams, Refiner
from medrefine.training.calibrate import VAL_KINDS
from medrefine.training.data import find_pairs, split_pairs
from medrefine.training.mask_sources import MaskSources, make_input_masks
from medrefine.training.refiner import (
    RefinerTrainConfig,
    load_fold_models,
    sample_timesteps,
    train_refiner,
)

TINY_DENOISER = DenoiserConfig(encoder="scratch", widths=(8, 8, 8, 8), attention=False, time_dim=16)
STRENGTHS, STEPS = (0.2, 0.4), (1, 2)


def _config(data, out, coarse_weights, **overrides):
    kwargs = dict(
        denoiser=TINY_DENOISER,
        epochs=1,
        batch_size=4,
        device="cpu",
        amp=False,
        pretrained=False,
        val_params=RefineParams(steps=1),
        tune_strengths=STRENGTHS,
        tune_steps=STEPS,
    )
    return RefinerTrainConfig(
        data_dir=str(data),
        output_dir=str(out),
        coarse_weights=str(coarse_weights),
        **{**kwargs, **overrides},
    )


@pytest.mark.parametrize(
    "diffusion",
    [DiffusionConfig(), DiffusionConfig(kind="bernoulli", num_timesteps=100)],
    ids=["gaussian", "bernoulli"],
)
def test_refiner_run(disk_data, coarse_run, tmp_path, diffusion, expected_tuning):
    run = train_refiner(
        _config(disk_data, tmp_path / "ref", coarse_run / "best.safetensors", diffusion=diffusion)
    )
    assert {
        "best.safetensors",
        "last.safetensors",
        "metrics.jsonl",
        "config.json",
        "training_curve.png",
    } <= {p.name for p in run.iterdir()}
    info = read_info(run / "best.safetensors")
    assert info["kind"] == "refiner"
    assert info["denoiser"]["image_channels"] == 1  # taken from the coarse model
    assert info["diffusion"] == diffusion.to_dict()
    defaults = info["refine_defaults"]
    assert defaults["steps"] in STEPS and defaults["leave_alone"] is True
    auto = info["auto_strength"]
    assert set(auto["strengths"]) <= {0.0, *STRENGTHS}  # 0: keep the input
    assert len(auto["strengths"]) == len(auto["edges"]) + 1
    assert defaults["strength"] == "auto"  # also where every bin has the same strength: the
    # table for the coarse model's own masks (--own-coarse) is read only with "auto"
    report = info["training"]["calibration"]
    assert report == json.loads((run / "calibration.json").read_text())
    assert set(report["per_kind"]) == set(VAL_KINDS)
    val_pairs = split_pairs(disk_data, find_pairs(disk_data), seed=0)["val"]
    scored = expected_tuning(run / "best.safetensors", coarse_run / "best.safetensors", val_pairs)
    for kind, row in report["per_kind"].items():
        assert row["fixed"] == pytest.approx(scored[kind], abs=1e-6)
        assert row["best_fixed"] == pytest.approx(max(row["fixed"].values()))
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1]
    assert 0 <= rows[0]["val_dice"] <= 1 and 0 <= rows[0]["val_dice_inputs"] <= 1
    config = json.loads((run / "config.json").read_text())
    assert config["stage"] == "refiner" and config["world_size"] == 1
    refiner = Refiner.from_weights(run / "best.safetensors", device="cpu")
    assert refiner.defaults == RefineParams(**defaults)
    rng = np.random.default_rng(0)
    out = refiner.refine_grid(
        rng.random((1, 64, 64)).astype(np.float32), rng.random((64, 64)).astype(np.float32)
    )
    assert out.probs.shape == (64, 64)


def test_refiner_refuses_a_multiclass_coarse_model(disk_data, coarse_config, tmp_path):
    from medrefine.models.registry import SegModelConfig
    from medrefine.training.coarse import train_coarse

    model = SegModelConfig(
        name="unet",
        in_channels=1,
        num_classes=2,
        encoder="scratch",
        widths=(4, 4, 4, 4, 4),
        decoder_widths=(4, 4, 4, 4),
    )
    coarse = train_coarse(
        coarse_config(disk_data, tmp_path / "c", model=model, epochs=1, class_names=("a", "b"))
    )
    with pytest.raises(ConfigError, match="multi-class"):
        train_refiner(_config(disk_data, tmp_path / "r", coarse / "best.safetensors"))


@pytest.mark.parametrize("kwargs", [{"t_focus": -0.1}, {"epochs": 0}, {"val_kinds": ("nope",)},
                                    {"val_kinds": ()}])
def test_config_checks(tmp_path, kwargs):
    with pytest.raises(ConfigError):
        _config(tmp_path, tmp_path, tmp_path / "c.safetensors", **kwargs)


def test_sample_timesteps_range():
    cfg = _config(".", ".", "c", t_focus=0.2, p_full_range=0.0)
    t = sample_timesteps(1000, cfg, 1000, torch.Generator().manual_seed(0))
    assert t.min() >= 0 and t.max() < 200
    cfg = _config(".", ".", "c", t_focus=0.2, p_full_range=1.0)
    t = sample_timesteps(1000, cfg, 1000, torch.Generator().manual_seed(0))
    assert t.max() >= 900 and t.max() < 1000


class _Constant:
    """Stands in for a coarse model: predicts ``value`` everywhere, counts its calls."""

    def __init__(self, value, size=8):
        self.value, self.calls = value, 0
        self.pre_cfg = SimpleNamespace(size=(size, size))
        self.seen = []

    def predict_grid(self, image01):
        self.calls += 1
        self.seen.append(tuple(image01.shape[-2:]))
        return torch.full((image01.shape[0], 1, *image01.shape[-2:]), self.value)


ONLY_COARSE = MaskSources(coarse=1, segmenters=0, corrupt=0, box=0, outline=0, shift=0,
                          fragment=0, lowres=0, hard=0)


def test_input_masks_use_each_samples_own_model():
    a, b = _Constant(0.25), _Constant(0.75)
    image01, labels = torch.zeros(5, 1, 8, 8), torch.zeros(5, 8, 8, dtype=torch.long)
    out = make_input_masks(ONLY_COARSE, [a, b, a, b, a], [], image01, labels,
                           np.random.default_rng(0))
    assert out[:, 0, 0, 0].tolist() == [0.25, 0.75, 0.25, 0.75, 0.25]
    assert a.calls == 1 and b.calls == 1  # one batched call per model
    only_synthetic = replace(ONLY_COARSE, coarse=0, corrupt=1)
    out = make_input_masks(only_synthetic, [a] * 5, [], image01, labels,
                           np.random.default_rng(0))
    assert a.calls == 1  # no model share: all made from the ground truth, no model call
    assert not torch.isin(out, torch.tensor([0.25])).any()


def test_other_segmenters_run_on_their_own_grid():
    coarse, low = _Constant(0.25), _Constant(0.75, size=4)
    image01, labels = torch.zeros(6, 1, 8, 8), torch.zeros(6, 8, 8, dtype=torch.long)
    sources = replace(ONLY_COARSE, coarse=0, segmenters=1)
    out = make_input_masks(sources, [coarse] * 6, [low], image01, labels,
                           np.random.default_rng(0))
    assert coarse.calls == 0 and low.seen == [(4, 4)]  # resized to its grid, one call
    assert out.shape == (6, 1, 8, 8) and torch.allclose(out, torch.tensor(0.75))
    hard = make_input_masks(replace(sources, hard=1.0), [coarse] * 6, [low], image01, labels,
                            np.random.default_rng(0))
    assert set(hard.unique().tolist()) == {1.0}  # thresholded as a PNG from another tool


@pytest.fixture(scope="module")
def fold_runs(disk_data, coarse_config, tmp_path_factory):
    from medrefine.training.coarse import train_coarse

    root = tmp_path_factory.mktemp("folds")
    return [train_coarse(coarse_config(disk_data, root / f"f{i}", epochs=1, cv_folds=2,
                                       cv_fold=i)) / "best.safetensors" for i in (0, 1)]


def test_fold_models_predict_the_cases_they_did_not_see(disk_data, coarse_run, fold_runs):
    from medrefine.inference import CoarseSegmenter
    from medrefine.training.data import cross_val_folds

    train = split_pairs(disk_data, find_pairs(disk_data))["train"]
    coarse = CoarseSegmenter.from_weights(coarse_run / "best.safetensors", "cpu")
    # given in the other order: models are matched to folds by what their weights say
    models = load_fold_models((str(fold_runs[1]), str(fold_runs[0])), coarse, train, "cpu")
    folds = cross_val_folds(train, 2, seed=0)
    for pair, model in zip(train, models, strict=True):
        assert model.info["training"]["cv_fold"] == folds[pair.stem]
    with pytest.raises(ConfigError, match="2-fold cross-validation"):
        load_fold_models((str(fold_runs[0]), str(fold_runs[0])), coarse, train, "cpu")
    with pytest.raises(ConfigError, match="cross-validation"):
        load_fold_models((str(coarse_run / "best.safetensors"),) * 2, coarse, train, "cpu")
    with pytest.raises(ConfigError, match="another train split"):
        load_fold_models(tuple(map(str, fold_runs)), coarse, train[1:], "cpu")


def test_refiner_run_on_out_of_fold_predictions(disk_data, coarse_run, fold_runs, tmp_path):
    run = train_refiner(_config(disk_data, tmp_path / "ref", coarse_run / "best.safetensors",
                                coarse_fold_weights=tuple(map(str, fold_runs)),
                                mask_sources=ONLY_COARSE))
    info = read_info(run / "best.safetensors")
    assert info["training"]["coarse_fold_weights"] == [str(p) for p in fold_runs]


def test_utility_is_loss_averse():
    from medrefine.training.calibrate import HARM_WEIGHT, utility

    # one input gains 0.03, another loses 0.02: the mean Dice rises, the utility falls
    assert utility([0.93, 0.88], [0.90, 0.90]) == pytest.approx((0.03 - HARM_WEIGHT * 0.02) / 2)
    assert utility([0.93, 0.88], [0.90, 0.90]) < 0 < np.mean([0.03, -0.02])
    assert utility([0.9, 0.8], [0.9, 0.8]) == 0.0


def test_near_mask_is_the_truth_within_two_pixels():
    import cv2

    from medrefine.metrics import dice
    from medrefine.training.calibrate import near_mask

    gt = np.zeros((96, 96), np.uint8)
    cv2.circle(gt, (48, 48), 30, 1, -1)
    for seed in range(4):
        near = near_mask(gt, np.random.default_rng(seed))
        assert near.dtype == gt.dtype and near.shape == gt.shape
        assert not np.array_equal(near, gt)
        assert 0.9 < dice(near > 0, gt > 0) < 1.0
        ring = cv2.dilate(gt, np.ones((5, 5), np.uint8)) - cv2.erode(gt, np.ones((5, 5), np.uint8))
        assert np.all((near != gt) <= (ring > 0))  # changes only within 2 px of the boundary


class _Scripted:
    """A refiner whose output Dice is scripted per input (its value) and strength; inputs are
    constant maps whose value is their own Dice, so ``dice_of`` reads it back."""

    def __init__(self, outcomes: dict[float, dict[float, float]], disagreement: dict):
        from medrefine.refine import AutoStrength

        self.outcomes, self.disagreement, self.auto = outcomes, disagreement, AutoStrength()

    def refine_grid(self, image01, probs, params):
        from types import SimpleNamespace

        given = round(float(probs.flat[0]), 4)
        strength, keep = params.strength, False
        d = self.disagreement[given]
        if strength == "auto":
            strength = self.auto.pick(d)
            keep = strength == 0 and params.leave_alone
            strength = strength or self.auto.probe
        out = given if keep else self.outcomes[given].get(strength, given)
        doubt = 0.0  # never in doubt: the table alone decides
        if params.leave_alone and doubt > self.auto.max_doubt:
            out = given
        return SimpleNamespace(probs=np.full((4, 4), out, np.float32), disagreement=d,
                               doubt=doubt)


def test_the_strength_table_is_loss_averse_and_boxes_are_still_refined():
    """A bin whose masks gain 0.010 and lose 0.008 at every strength has a higher mean Dice
    refined, but a lower loss-averse utility: it keeps its masks as they are (strength 0),
    while the boxes in another bin are refined at their best strength."""
    from medrefine.refine import RefineParams
    from medrefine.training.calibrate import ValCase, ValSet, calibrate

    strengths = (0.1, 0.3, 0.5)
    up, down, box = 0.9, 0.92, 0.5  # input Dice of two near-perfect masks and of a box
    outcomes = {up: {s: up + 0.010 for s in strengths},
                down: {s: down - 0.008 for s in strengths},
                box: {0.1: 0.6, 0.3: 0.8, 0.5: 0.9}}
    # up/down: the same small disagreement (one bin), boxes: large (another)
    disagreement = {up: 0.01, down: 0.01, box: 0.5}

    class Val(ValSet):
        def __init__(self):
            self.kinds = ("near", "coarse", "box")
            self.cases = [ValCase(np.zeros((1, 4, 4), np.float32),
                                  {"near": np.full((4, 4), up, np.float32),
                                   "coarse": np.full((4, 4), down, np.float32),
                                   "box": np.full((4, 4), box, np.float32)},
                                  None, None, {}) for _ in range(4)]

        def dice_of(self, case, probs_grid):
            return round(float(probs_grid.flat[0]), 4)

    refiner = _Scripted(outcomes, disagreement)
    _, auto, report = calibrate(refiner, Val(), RefineParams(steps=2), strengths, (2,))
    assert auto.pick(0.01) == 0.0  # masks kept (the mean Dice alone would refine them)
    assert auto.pick(0.5) == 0.5  # boxes refined at their best
    assert report["per_kind"]["near"]["auto"] == pytest.approx(up)
    assert report["per_kind"]["coarse"]["auto"] == pytest.approx(down)
    assert report["per_kind"]["box"]["auto"] == pytest.approx(0.9)
