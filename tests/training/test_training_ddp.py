"""DDP on CPU: ``torch.distributed.run`` with 2 gloo processes runs the same train command."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from medrefine.checkpoint import read_info


def _torchrun(*args):
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "medrefine.cli",
        "train",
        "--device",
        "cpu",
        "--no-amp",
        "--no-pretrained",
        *args,
    ]


def test_torchrun_two_processes(disk_data, tmp_path, torchrun_env):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "stage": "coarse",
                "coarse": {
                    "batch_size": 2,  # 10 training cases -> 5 per process
                    "model": {
                        "name": "unet",
                        "encoder": "scratch",
                        "in_channels": 1,
                        "widths": [4, 8, 8, 8, 8],
                        "decoder_widths": [8, 8, 4, 4],
                    },
                    "preprocess": {"size": [64, 64], "channels": 1},
                },
            }
        )
    )
    out = tmp_path / "out"
    env = torchrun_env
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "medrefine.cli",
        "train",
        "--config",
        str(cfg),
        "--stage",
        "coarse",
        "--data",
        str(disk_data),
        "-o",
        str(out),
        "--epochs",
        "2",
        "--device",
        "cpu",
        "--no-amp",
        "--no-pretrained",
    ]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "best.safetensors").is_file() and (out / "last.safetensors").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["world_size"] == 2
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]  # one row per epoch, not one per process
    assert read_info(out / "last.safetensors")["training"]["epoch"] == 2
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_torchrun_refiner_tunes_on_the_whole_val_split(
    disk_data, coarse_run, tmp_path, expected_tuning, torchrun_env
):
    import shutil

    from medrefine.training.data import find_pairs

    data = tmp_path / "data"
    shutil.copytree(disk_data, data)
    stems = sorted(find_pairs(data))
    split = {"train": stems[:8], "val": stems[8:10], "test": stems[10:]}
    (data / "manifest.json").write_text(json.dumps({"split": split}))
    cfg = tmp_path / "refiner.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "stage": "refiner",
                "refiner": {
                    "batch_size": 2,
                    # EfficientNet condition encoder: every parameter must get a gradient under DDP
                    "denoiser": {
                        "encoder": "efficientnet_lite0",
                        "widths": [8, 8, 8, 8],
                        "attention": False,
                        "time_dim": 16,
                    },
                    "val_params": {"steps": 1},
                    "tune_strengths": [0.2, 0.5],
                    "tune_steps": [1],
                },
            }
        )
    )
    out = tmp_path / "out"
    coarse = coarse_run / "best.safetensors"
    proc = subprocess.run(
        _torchrun(
            "--config",
            str(cfg),
            "--data",
            str(data),
            "-o",
            str(out),
            "--epochs",
            "1",
            "--coarse-weights",
            str(coarse),
        ),
        env=torchrun_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = read_info(out / "best.safetensors")
    assert json.loads((out / "config.json").read_text())["world_size"] == 2
    pairs = find_pairs(data)
    expected = expected_tuning(out / "best.safetensors", coarse, [pairs[s] for s in split["val"]])
    got = {k: v["fixed"] for k, v in info["training"]["calibration"]["per_kind"].items()}
    assert got.keys() == expected.keys()
    for kind in got:
        assert got[kind] == pytest.approx(expected[kind], abs=1e-6)
