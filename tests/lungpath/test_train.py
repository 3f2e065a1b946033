"""``medrefine train --stage lungpath``: both stages on the real 8-bit train slices, tiny."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from medrefine.checkpoint import read_info
from medrefine.cli import main


@pytest.mark.slow  # about 10 s on an idle machine, 20-30 s under the shared load
def test_two_stage_training_writes_loadable_weights(tmp_path, data_root):
    config = {
        "stage": "lungpath",
        "net": {"widths": [8, 16], "time_dim": 16, "proj_dim": 8},
        "diffusion": {"num_timesteps": 100, "prediction": "epsilon"},
        "train": {
            "data_dirs": [str(data_root / "medseg_covid_ct_infnet")],
            "n_patches": 48,
            "max_slices": 6,
            "batch_size": 8,
            "stage1_steps": 3,
            "stage2_steps": 3,
            "warmup_steps": 2,
            "log_every": 1,
            "distill_max_t": 100,
        },
    }
    path = tmp_path / "lp.yaml"
    path.write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    assert main(["train", "--stage", "lungpath", "--config", str(path), "-o", str(run)]) == 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == [1, 1, 1, 2, 2, 2]
    assert all(r["infonce"] == 0 for r in rows[:3]) and all(r["infonce"] > 0 for r in rows[3:])
    info = read_info(run / "stage2.safetensors")
    assert info["stage"] == 2 and info["model"]["net"]["widths"] == [8, 16]
    assert len(info["radiomics_mean"]) == 34 and info["training"]["patches"] == 48
    # the distilled weights drive the pipeline
    from medrefine.lungpath.features import FeatureConfig
    from medrefine.lungpath.pipeline import InferenceConfig, LungPathologyPipeline

    cfg = InferenceConfig(features=FeatureConfig(timesteps=(5, 50)))
    pipe = LungPathologyPipeline(run / "stage2.safetensors", cfg)
    hu = np.full((3, 64, 64), -850.0, np.float32)  # a toy chest: body wall, two "lungs"
    hu[:, :4], hu[:, -4:], hu[:, :, :4], hu[:, :, -4:] = 40, 40, 40, 40
    hu[:, :, 30:34] = 40  # mediastinum
    hu[:, 0, :] = -1000  # outside air along the top row
    from medrefine.io import LoadedImage

    result = pipe.run(
        LoadedImage(hu[None], (1.0, 1.0, 1.0), {"format": "nifti", "source_dtype": "int16"})
    )
    assert result.labels.shape == (3, 64, 64) and result.labels.max() <= 5


def test_unknown_config_keys_are_errors(tmp_path, capsys):
    path = tmp_path / "lp.yaml"
    path.write_text("stage: lungpath\ntrain:\n  n_patchez: 3\n")
    assert (
        main(["train", "--stage", "lungpath", "--config", str(path), "-o", str(tmp_path / "r")])
        == 2
    )
    assert "n_patchez" in capsys.readouterr().err


@pytest.mark.slow
def test_training_under_torchrun(data_root, torchrun_lungpath):
    """Two CPU processes (gloo DDP): rank 0 writes both stages' weights."""
    out, run = torchrun_lungpath(
        {
            "stage": "lungpath",
            "net": {"widths": [8, 16], "time_dim": 16, "proj_dim": 8},
            "diffusion": {"num_timesteps": 100, "prediction": "epsilon"},
            "train": {
                "data_dirs": [str(data_root / "medseg_covid_ct_infnet")],
                "n_patches": 32,
                "max_slices": 4,
                "batch_size": 8,
                "stage1_steps": 2,
                "stage2_steps": 2,
                "log_every": 1,
                "distill_max_t": 100,
            },
        }
    )
    assert read_info(run / "stage2.safetensors")["training"]["world_size"] == 2
    assert out.stdout.count("lung-pathology model:") == 1
