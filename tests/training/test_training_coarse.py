"""End-to-end CPU smoke runs of the coarse training loop: run folder contents, weights that
rebuild their model, resume, multi-class, wall-time stop, and configuration errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from medrefine.checkpoint import load_state, read_info
from medrefine.errors import ConfigError
from medrefine.inference import CoarseSegmenter
from medrefine.io import read_image
from medrefine.models.registry import SegModelConfig
from medrefine.training.coarse import CoarseTrainConfig, train_coarse
from medrefine.training.data import cross_val_folds, find_pairs, split_pairs

RUN_FILES = {
    "best.safetensors",
    "last.safetensors",
    "metrics.jsonl",
    "config.json",
    "training_curve.png",
    "resume.pt",
}


def _rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_run_folder(coarse_run, disk_data):
    assert RUN_FILES <= {p.name for p in coarse_run.iterdir()}
    assert not [p.name for p in coarse_run.iterdir() if p.name.startswith(".")]  # no temp files
    assert (coarse_run / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = _rows(coarse_run)
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        assert np.isfinite(r["train_loss"]) and 0 <= r["val_dice"] <= 1
        assert r["best"] == max(x["val_dice"] for x in rows[: r["epoch"]])
    config = json.loads((coarse_run / "config.json").read_text())
    assert config["stage"] == "coarse" and config["world_size"] == 1
    assert config["model"]["widths"] == [4, 8, 8, 8, 8]
    assert config["data_dir"] == str(disk_data)


def test_weights_rebuild_the_model(coarse_run, disk_data):
    info = read_info(coarse_run / "best.safetensors")
    assert info["kind"] == "coarse" and info["class_names"] == ["foreground"]
    assert SegModelConfig.from_dict(info["model"]).widths == (4, 8, 8, 8, 8)
    assert info["preprocess"]["size"] == [64, 64]
    best_epoch = max(_rows(coarse_run), key=lambda r: (r["val_dice"], -r["epoch"]))["epoch"]
    assert info["training"]["epoch"] == best_epoch
    assert read_info(coarse_run / "last.safetensors")["training"]["epoch"] == 2
    seg = CoarseSegmenter.from_weights(coarse_run / "best.safetensors", device="cpu")
    loaded = read_image(disk_data / "images" / "case_00.png")
    probs = seg.predict(loaded.array, loaded.meta["source_dtype"])
    assert probs.shape == (1, 64, 64) and probs.dtype == np.float32
    assert probs.min() >= 0 and probs.max() <= 1


def test_resume_continues_from_the_saved_epoch(coarse_run_copy, disk_data, coarse_config):
    before = _rows(coarse_run_copy)
    last_before = load_state(coarse_run_copy / "last.safetensors")
    train_coarse(coarse_config(disk_data, coarse_run_copy, epochs=3, resume=True))
    rows = _rows(coarse_run_copy)
    assert [r["epoch"] for r in rows] == [1, 2, 3]  # not restarted at 1, not repeated
    assert rows[:2] == before
    assert read_info(coarse_run_copy / "last.safetensors")["training"]["epoch"] == 3
    last_after = load_state(coarse_run_copy / "last.safetensors")
    assert any(
        not np.array_equal(last_before[k].numpy(), last_after[k].numpy())
        for k in last_before
        if k.endswith("weight")
    )


def test_resume_with_a_finished_run_trains_nothing(coarse_run_copy, disk_data, coarse_config):
    before = (coarse_run_copy / "last.safetensors").read_bytes()
    train_coarse(coarse_config(disk_data, coarse_run_copy, epochs=2, resume=True))
    assert [r["epoch"] for r in _rows(coarse_run_copy)] == [1, 2]
    assert (coarse_run_copy / "last.safetensors").read_bytes() == before


def test_max_minutes_stops_early(disk_data, coarse_config, tmp_path):
    run = train_coarse(coarse_config(disk_data, tmp_path / "run", epochs=5, max_minutes=1e-6))
    assert [r["epoch"] for r in _rows(run)] == [1]
    assert (run / "best.safetensors").is_file()


@pytest.fixture(scope="module")
def multiclass_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("multi")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        labels = np.zeros((64, 64), np.uint8)
        y, x = rng.integers(4, 30, 2)
        labels[y : y + 20, x : x + 20] = 1
        labels[40:56, 40:60] = 2
        image = np.clip(40 + 80 * labels + rng.normal(0, 10, labels.shape), 0, 255)
        Image.fromarray(image.astype(np.uint8)).save(root / "images" / f"m{i}.png")
        Image.fromarray(labels).save(root / "masks" / f"m{i}.png")
    return root


def test_multiclass_run(multiclass_data, coarse_config, tmp_path):
    model = SegModelConfig(
        name="unet3plus", in_channels=1, num_classes=2, encoder="scratch", widths=(4, 4, 8, 8, 8)
    )
    run = train_coarse(
        coarse_config(
            multiclass_data, tmp_path / "run", model=model, class_names=("square", "bar"), epochs=1
        )
    )
    info = read_info(run / "best.safetensors")
    assert info["model"]["num_classes"] == 2 and info["class_names"] == ["square", "bar"]
    seg = CoarseSegmenter.from_weights(run / "best.safetensors", device="cpu")
    loaded = read_image(multiclass_data / "images" / "m0.png")
    probs = seg.predict(loaded.array, loaded.meta["source_dtype"])
    assert probs.shape == (3, 64, 64)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-4)
    assert 0 <= _rows(run)[0]["val_dice"] <= 1


def test_fine_tuning_starts_from_another_models_weights(
    coarse_run, multiclass_data, coarse_config, tmp_path
):
    """init_weights: a 1-class run's tensors start a 2-class model of the same architecture;
    the output heads (other shapes) keep their own initial values, and the run records it."""
    import torch

    from medrefine.checkpoint import load_matching
    from medrefine.errors import InputError
    from medrefine.models.registry import build_seg_model

    source = load_state(coarse_run / "best.safetensors")
    one = SegModelConfig.from_dict(read_info(coarse_run / "best.safetensors")["model"])
    two = SegModelConfig.from_dict({**one.to_dict(), "num_classes": 2})
    torch.manual_seed(1)
    model = build_seg_model(two, pretrained=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    copied, total = load_matching(model, coarse_run / "best.safetensors")
    after = model.state_dict()
    assert 0 < copied < total
    for key, value in after.items():
        if key in source and source[key].shape == value.shape:
            assert torch.equal(value, source[key]), key
        else:
            assert torch.equal(value, before[key]), key
    with pytest.raises(InputError, match="no tensor"):
        load_matching(torch.nn.Linear(3, 3), coarse_run / "best.safetensors")
    run = train_coarse(
        coarse_config(
            multiclass_data,
            tmp_path / "run",
            model=two,
            class_names=("square", "bar"),
            epochs=1,
            init_weights=str(coarse_run / "best.safetensors"),
        )
    )
    info = read_info(run / "best.safetensors")
    assert info["training"]["init_weights"] == str(coarse_run / "best.safetensors")


def test_class_names_must_match(disk_data, tmp_path):
    with pytest.raises(ConfigError, match="class names"):
        CoarseTrainConfig(str(disk_data), str(tmp_path), class_names=("a", "b"))


@pytest.mark.parametrize("kwargs", [{"epochs": 0}, {"batch_size": 0}, {"lr": 0.0}])
def test_bad_numbers(disk_data, tmp_path, kwargs):
    with pytest.raises(ConfigError):
        CoarseTrainConfig(str(disk_data), str(tmp_path), **kwargs)


def test_batch_larger_than_the_training_set(disk_data, coarse_config, tmp_path):
    with pytest.raises(ConfigError, match="batch_size"):
        train_coarse(coarse_config(disk_data, tmp_path / "run", batch_size=64))


def test_model_and_preprocess_channels_must_agree(disk_data, tmp_path):
    with pytest.raises(ConfigError, match="channels"):
        CoarseTrainConfig(str(disk_data), str(tmp_path), model=SegModelConfig(in_channels=1))


@pytest.mark.parametrize(
    ("folder", "names"),
    [
        ("covid_cxr_lungs", ("right lung", "left lung", "heart/mediastinum")),
        ("medseg_covid_ct_infnet", ("ground-glass", "consolidation")),
    ],
)
def test_multiclass_on_real_label_maps(data_dir, folder, names, coarse_config, tmp_path):
    """One short epoch on the real multi-class data sets: label maps load, every class is
    learned as its own softmax channel, and validation scores them."""
    root = data_dir / folder
    mask_dir = "masks_multiclass" if (root / "masks_multiclass").is_dir() else "masks"
    model = SegModelConfig(
        in_channels=1,
        num_classes=len(names),
        encoder="scratch",
        widths=(4, 4, 8, 8, 8),
        decoder_widths=(8, 8, 4, 4),
    )
    run = train_coarse(
        coarse_config(
            root,
            tmp_path / "run",
            model=model,
            class_names=names,
            mask_dir=mask_dir,
            epochs=1,
            batch_size=8,
        )
    )
    info = read_info(run / "best.safetensors")
    assert info["class_names"] == list(names)
    assert 0 <= _rows(run)[0]["val_dice"] <= 1


def test_cross_validation_fold_leaves_its_cases_out(disk_data, coarse_config, tmp_path, caplog):
    train = split_pairs(disk_data, find_pairs(disk_data))["train"]
    held_out = sum(f == 1 for f in cross_val_folds(train, 2, seed=0).values())
    with caplog.at_level("INFO", logger="medrefine.training.coarse"):
        run = train_coarse(
            coarse_config(disk_data, tmp_path / "f1", epochs=1, cv_folds=2, cv_fold=1)
        )
    assert f"fold 1/2: training on {len(train) - held_out} cases" in caplog.text
    assert 0 < held_out < len(train)
    training = read_info(run / "best.safetensors")["training"]
    assert training["cv_folds"] == 2 and training["cv_fold"] == 1
    assert len(training["cv_cases"]) == 16  # fingerprint of the whole train split


@pytest.mark.parametrize(
    "kwargs", [{"cv_folds": 1}, {"cv_folds": 3, "cv_fold": 3}, {"cv_folds": 2, "cv_fold": -1}]
)
def test_cross_validation_settings_are_checked(disk_data, coarse_config, tmp_path, kwargs):
    with pytest.raises(ConfigError, match="cv_fold"):
        coarse_config(disk_data, tmp_path, **kwargs)
