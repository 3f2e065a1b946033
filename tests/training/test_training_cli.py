"""``medrefine train`` through ``medrefine.cli.main``: flags over a tiny YAML config."""

from __future__ import annotations

import json

import yaml

from medrefine.checkpoint import read_info
from medrefine.cli import main

TINY_MODEL = {"in_channels": 1, "widths": [4, 8, 8, 8, 8], "decoder_widths": [8, 8, 4, 4]}
TINY_REFINER = {
    "batch_size": 4,
    "denoiser": {"encoder": "scratch", "widths": [8, 8, 8, 8], "attention": False, "time_dim": 16},
    "val_params": {"steps": 1},
    "tune_strengths": [0.3],
    "tune_steps": [1, 2],
}


def _yaml(path, data):
    path.write_text(yaml.safe_dump(data))
    return path


def _base_config(tmp_path):
    return _yaml(
        tmp_path / "tiny.yaml",
        {
            "coarse": {"batch_size": 4, "model": TINY_MODEL, "preprocess": {"channels": 1}},
            "refiner": TINY_REFINER,
        },
    )


COMMON = ["--device", "cpu", "--no-amp", "--no-pretrained"]
# one epoch of a tiny scratch U-Net on the 64x64 grid
TINY_RUN = ["--epochs", "1", "--arch", "unet", "--encoder", "scratch", "--size", "64", *COMMON]


def test_train_coarse_from_flags(disk_data, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(
        [
            "train",
            "--stage",
            "coarse",
            "--config",
            str(_base_config(tmp_path)),
            "--data",
            str(disk_data),
            "-o",
            str(out),
            *TINY_RUN,
        ]
    )
    assert rc == 0
    assert str(out / "best.safetensors") in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["epochs"] == 1 and config["amp"] is False and config["pretrained"] is False
    assert config["model"]["name"] == "unet" and config["model"]["encoder"] == "scratch"
    assert config["model"]["widths"] == TINY_MODEL["widths"]  # from the YAML
    assert config["preprocess"]["size"] == [64, 64] and config["preprocess"]["channels"] == 1
    info = read_info(out / "best.safetensors")
    assert info["model"]["name"] == "unet" and info["preprocess"]["size"] == [64, 64]


def test_train_both_stages(disk_data, tmp_path):
    out = tmp_path / "out"
    rc = main(
        [
            "train",
            "--model",
            "both",
            "--config",
            str(_base_config(tmp_path)),
            "--data",
            str(disk_data),
            "-o",
            str(out),
            *TINY_RUN,
        ]
    )
    assert rc == 0
    coarse = out / "coarse" / "best.safetensors"
    refiner = out / "refiner" / "best.safetensors"
    assert read_info(coarse)["kind"] == "coarse"
    info = read_info(refiner)
    assert info["kind"] == "refiner"
    # the one strength tuned, or auto between it and keeping the input (0)
    assert info["refine_defaults"]["strength"] in (0.3, "auto")
    assert set(info["auto_strength"]["strengths"]) <= {0.0, 0.3}
    assert info["training"]["coarse_weights"] == "best.safetensors"
    config = json.loads((out / "refiner" / "config.json").read_text())
    assert config["coarse_weights"] == str(coarse) and config["epochs"] == 1


def test_refiner_stage_needs_coarse_weights(disk_data, tmp_path, capsys):
    rc = main(
        ["train", "--stage", "refiner", "--data", str(disk_data), "-o", str(tmp_path), *COMMON]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "--coarse-weights" in err and err.count("\n") == 1


def test_unknown_yaml_key_is_one_line_and_exit_2(disk_data, tmp_path, capsys):
    cfg = _yaml(tmp_path / "bad.yaml", {"coarse": {"batch_sise": 4}})
    rc = main(
        [
            "train",
            "--stage",
            "coarse",
            "--config",
            str(cfg),
            "--data",
            str(disk_data),
            "-o",
            str(tmp_path / "out"),
            *COMMON,
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "batch_sise" in err and err.startswith("medrefine: error:")


def test_missing_data_dir(tmp_path, capsys):
    assert main(["train", "--stage", "coarse", "-o", str(tmp_path), *COMMON]) == 2
    assert "--data" in capsys.readouterr().err


def test_flat_config_file_with_stage(disk_data, tmp_path):
    cfg = _yaml(
        tmp_path / "flat.yaml",
        {
            "stage": "coarse",
            "batch_size": 4,
            "model": TINY_MODEL,
            "preprocess": {"channels": 1, "size": [64, 64]},
        },
    )
    rc = main(
        [
            "train",
            "--config",
            str(cfg),
            "--data",
            str(disk_data),
            "-o",
            str(tmp_path / "out"),
            "--epochs",
            "1",
            "--encoder",
            "scratch",
            "--arch",
            "unet",
            *COMMON,
        ]
    )
    assert rc == 0 and (tmp_path / "out" / "best.safetensors").is_file()


def test_out_of_fold_training_from_flags(disk_data, tmp_path, capsys):
    """Two fold models (--cv-folds/--cv-fold), then a refiner on their out-of-fold masks."""
    base = [
        "--config",
        str(_base_config(tmp_path)),
        "--data",
        str(disk_data),
        *TINY_RUN,
    ]
    folds = []
    for fold in ("0", "1"):
        out = tmp_path / f"fold{fold}"
        argv = ["train", "--stage", "coarse", "--cv-folds", "2", "--cv-fold", fold, "-o", str(out)]
        assert main([*argv, *base]) == 0
        assert read_info(out / "best.safetensors")["training"]["cv_fold"] == int(fold)
        folds.append(str(out / "best.safetensors"))
    ref = tmp_path / "ref"
    rc = main(
        ["train", "--stage", "refiner", "--coarse-weights", folds[0], "--coarse-fold-weights",
         *folds, "-o", str(ref), *base]
    )
    assert rc == 0
    assert read_info(ref / "best.safetensors")["training"]["coarse_fold_weights"] == folds
    rc = main(
        ["train", "--stage", "refiner", "--coarse-weights", folds[0], "--coarse-fold-weights",
         folds[0], folds[0], "-o", str(tmp_path / "bad"), *base]
    )
    assert rc == 2
    assert "cross-validation" in capsys.readouterr().err
