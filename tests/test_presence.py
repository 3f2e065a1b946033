"""The presence gate: its file, its tie to one coarse model, the pipeline's use of it (own masks
of 2D images only), and its fit through ``medrefine train --stage presence``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from medrefine.checkpoint import file_sha256
from medrefine.cli import main
from medrefine.errors import ConfigError, InputError
from medrefine.pipeline import SegmentationPipeline
from medrefine.postprocess import PostprocessConfig
from medrefine.presence import PresenceGate, PresenceRule, pooled_features
from medrefine.presets import PRESETS
from medrefine.resolve import resolve_models
from medrefine.training.presence import choose, gated_scores

# the tiny scratch encoder's three deepest maps are 8 channels each
FEATURES = 24


def _rule(intercept: float, threshold: float = 0.5) -> PresenceRule:
    return PresenceRule(np.zeros(FEATURES), np.ones(FEATURES), np.zeros(FEATURES), intercept,
                        threshold)


def _gate_file(tmp_path, coarse, intercept: float, threshold: float = 0.5):
    return _rule(intercept, threshold).save(tmp_path / "presence.safetensors",
                                            {"coarse_sha256": file_sha256(coarse)})


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((3, 40, 48)).astype(np.float32)


def test_the_rule_is_a_logistic_read_out_of_standardised_features():
    rule = PresenceRule(np.array([1.0, 2.0]), np.array([2.0, 1.0]), np.array([1.0, -1.0]),
                        0.5, 0.3)
    # standardised [1, -1], times coef [1, -1] is 2, plus the intercept 0.5
    assert rule.probability(np.array([3.0, 1.0])) == pytest.approx(1 / (1 + np.exp(-2.5)))
    assert rule.probability(np.zeros((4, 2))).shape == (4,)
    with pytest.raises(ConfigError, match="threshold"):
        PresenceRule(rule.mean, rule.scale, rule.coef, 0.0, 1.0)
    with pytest.raises(ConfigError, match="one"):
        PresenceRule(rule.mean, rule.scale, np.ones(3), 0.0, 0.5)


def test_a_gate_file_loads_against_its_own_coarse_model_only(tmp_path, tiny_weights):
    path = _gate_file(tmp_path, tiny_weights["coarse"], intercept=2.0, threshold=0.4)
    gate = PresenceGate.load(path, tiny_weights["coarse"], device="cpu")
    assert gate.threshold == pytest.approx(0.4)
    grid01 = np.random.default_rng(0).random((3, 32, 32)).astype(np.float32)
    assert gate.probability(grid01) == pytest.approx(1 / (1 + np.exp(-2.0)), abs=1e-6)
    assert gate.decide(grid01)["emptied"] is False
    other = tmp_path / "other.safetensors"
    shutil.copy(tiny_weights["coarse"], other)
    with open(other, "ab") as f:  # other bytes: another model as far as the gate can tell
        f.write(b" ")
    with pytest.raises(InputError, match="fitted to other coarse weights"):
        PresenceGate.load(path, other, device="cpu")
    with pytest.raises(InputError, match="not a presence gate"):
        PresenceGate.load(tiny_weights["coarse"], tiny_weights["coarse"], device="cpu")
    with pytest.raises(ConfigError, match="coarse_sha256"):
        _rule(0.0).save(tmp_path / "x.safetensors", {})


def test_features_average_the_flipped_views(tmp_path, tiny_weights):
    gate = PresenceGate.load(_gate_file(tmp_path, tiny_weights["coarse"], 0.0),
                             tiny_weights["coarse"], "cpu")
    grid01 = np.random.default_rng(1).random((3, 32, 32)).astype(np.float32)
    plain = pooled_features(gate.encoder, grid01)
    assert plain.shape == (FEATURES,)
    flipped = pooled_features(gate.encoder, grid01[:, :, ::-1].copy())
    both = pooled_features(gate.encoder, grid01, ("hflip",))
    np.testing.assert_allclose(both, (plain + flipped) / 2, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("intercept, emptied", [(-30.0, True), (30.0, False)])
def test_the_pipeline_empties_its_own_mask_where_the_gate_finds_no_object(
        tmp_path, tiny_weights, intercept, emptied):
    models = resolve_models(tiny_weights["coarse"], use_diffusion=False, device="cpu")
    post = PostprocessConfig(threshold=0.01)  # the untrained model's mask is not empty
    plain = SegmentationPipeline.from_models(models, postprocess=post)
    gate = PresenceGate.load(_gate_file(tmp_path, tiny_weights["coarse"], intercept),
                             tiny_weights["coarse"], "cpu")
    gated = SegmentationPipeline.from_models(replace(models, presence=gate), postprocess=post)
    image = _image()
    before, after = plain.run(image), gated.run(image)
    assert before.mask.any() and "presence" not in before.params
    assert after.params["presence"]["emptied"] is emptied
    assert after.params["presence"]["threshold"] == 0.5
    assert after.mask.any() is not emptied
    assert gated.provenance()["weights"]["presence"]["threshold"] == 0.5
    if not emptied:
        np.testing.assert_array_equal(after.mask, before.mask)
    np.testing.assert_array_equal(after.coarse_probs, before.coarse_probs)  # shown as it was


def test_a_given_mask_is_never_gated(tmp_path, tiny_weights):
    models = resolve_models(tiny_weights["coarse"], tiny_weights["refiner"], device="cpu")
    gate = PresenceGate.load(_gate_file(tmp_path, tiny_weights["coarse"], -30.0),
                             tiny_weights["coarse"], "cpu")
    pipe = SegmentationPipeline.from_models(replace(models, presence=gate))
    given = np.zeros((40, 48), np.uint8)
    given[10:30, 12:36] = 1
    result = pipe.run(_image(), coarse_mask=given)
    assert "presence" not in result.params
    result = pipe.run(_image(), boxes=[(12, 10, 36, 30)])
    assert "presence" not in result.params


def test_the_shipped_breast_us_gate_belongs_to_its_coarse_model():
    models = resolve_models(preset="breast-us", use_diffusion=False, device="cpu")
    assert models.presence is not None and 0 < models.presence.threshold < 1
    # a coarse model of one's own runs without the preset's gate (it reads another encoder)
    other = resolve_models(PRESETS["skin"].coarse_weights, preset="breast-us",
                           use_diffusion=False, device="cpu")
    assert other.presence is None


def test_choose_takes_the_best_object_dice_whose_gate_alone_reaches_the_target():
    rows = [
        {"C": 0.01, "threshold": 0.1, "gate_empties": 0.80, "object_dice": 0.86},
        {"C": 0.01, "threshold": 0.3, "gate_empties": 0.92, "object_dice": 0.84},
        {"C": 0.03, "threshold": 0.2, "gate_empties": 0.91, "object_dice": 0.85},
        {"C": 0.03, "threshold": 0.5, "gate_empties": 0.99, "object_dice": 0.70},
    ]
    assert choose(rows, 0.9)["threshold"] == 0.2
    assert choose(rows, 0.995)["threshold"] == 0.5  # none reaches it: the gate that empties most
    cases = [{"has_object": True, "empty": False, "dice": 0.8},
             {"has_object": True, "empty": False, "dice": 0.6},
             {"has_object": False, "empty": True, "dice": 1.0},
             {"has_object": False, "empty": False, "dice": 0.0}]
    s = gated_scores(cases, np.array([0.9, 0.1, 0.9, 0.2]), 0.5)
    assert s["objects_gated"] == 1 and s["object_dice"] == pytest.approx(0.4)
    assert s["empty_left_empty"] == 1.0 and s["gate_empties"] == 0.5


def _folder(root, n: int = 40):
    """n 48 x 48 grey images: half with a bright square (its mask), half plain (empty mask)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        image = (rng.random((48, 48)) * 60).astype(np.uint8)
        mask = np.zeros((48, 48), np.uint8)
        if i % 2 == 0:
            y, x = rng.integers(4, 20, 2)
            image[y:y + 22, x:x + 22] = 230
            mask[y:y + 22, x:x + 22] = 255
        Image.fromarray(image).save(root / "images" / f"case{i:02d}.png")
        Image.fromarray(mask).save(root / "masks" / f"case{i:02d}.png")
    return root


def test_train_stage_presence_fits_a_gate_that_loads(tmp_path, tiny_weights, capsys):
    data = _folder(tmp_path / "data")
    out = tmp_path / "run"
    assert main(["train", "--stage", "presence", "--data", str(data), "-o", str(out),
                 "--coarse-weights", str(tiny_weights["coarse"]), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "presence gate: C" in printed and "val" in printed
    fit = json.loads((out / "presence_fit.json").read_text())
    assert fit["coarse_sha256"] == file_sha256(tiny_weights["coarse"])
    assert len(fit["table"]) == 4 * 10  # every C x threshold, cross-validated on train
    assert {r["stem"] for r in fit["val_cases"]}  # the val images, each with its probability
    gate = PresenceGate.load(out / "presence.safetensors", tiny_weights["coarse"], "cpu")
    assert gate.threshold == fit["threshold"]


def test_train_stage_presence_needs_empty_masks_in_train(tmp_path, tiny_weights):
    data = _folder(tmp_path / "data")
    for i in range(1, 40, 2):  # every image now holds an object
        (data / "images" / f"case{i:02d}.png").unlink()
        (data / "masks" / f"case{i:02d}.png").unlink()
    code = main(["train", "--stage", "presence", "--data", str(data), "-o",
                 str(tmp_path / "run"), "--coarse-weights", str(tiny_weights["coarse"]),
                 "--device", "cpu"])
    assert code == 2


@pytest.mark.parametrize("switch", [[], ["--no-presence-gate"]])
def test_segment_reports_the_gate_and_turns_it_off_on_request(data_dir, tmp_path, switch):
    # a normal train frame on which the coarse model draws a blob and the gate finds no lesion
    image = data_dir / "busi" / "images" / "normal_093.jpg"
    out = tmp_path / "out"
    assert main(["segment", str(image), "-o", str(out), "--preset", "breast-us",
                 "--device", "cpu", *switch]) == 0
    mask = np.asarray(Image.open(out / "normal_093.png"))
    entry = json.loads((out / "report.json").read_text())["files"][0]
    weights = json.loads((out / "report.json").read_text())["provenance"]["weights"]
    if switch:
        assert mask.any() and "presence" not in entry and "presence" not in weights
    else:
        assert not mask.any()
        gate = entry["presence"]
        assert gate["emptied"] is True and gate["probability"] < gate["threshold"]
        assert weights["presence"]["sha256"] == file_sha256(PRESETS["breast-us"].presence_weights)


def test_train_stage_presence_runs_unchanged_under_torchrun(tmp_path, tiny_weights,
                                                            torchrun_env):
    data = _folder(tmp_path / "data")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "medrefine.cli", "train", "--stage", "presence", "--data", str(data), "-o",
           str(out), "--coarse-weights", str(tiny_weights["coarse"]), "--device", "cpu"]
    proc = subprocess.run(cmd, env=torchrun_env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("presence gate: C") == 1  # rank 0 fits and prints, once
    assert PresenceGate.load(out / "presence.safetensors", tiny_weights["coarse"], "cpu")
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
