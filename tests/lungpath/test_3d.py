"""3D patches as an option (issue 13): the 3D net, its config checks, the volume stacks, a
tiny 3D training run driving the pipeline, and the chunked 3D featurisation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from medrefine.checkpoint import read_info, save_weights
from medrefine.errors import ConfigError
from medrefine.lungpath.features import (
    FeatureConfig,
    bottleneck_features,
    bottleneck_features_3d,
    z_chunks,
)
from medrefine.lungpath.net import LungDenoiser, NetConfig, SliceGroupNorm
from medrefine.lungpath.train import ModelConfig, TrainConfig, augment, check_dims

TINY = {"widths": (8, 16), "time_dim": 16, "proj_dim": 8}


def tiny_3d(seed: int = 0) -> LungDenoiser:
    torch.manual_seed(seed)
    return LungDenoiser(NetConfig(**TINY, dims=3)).eval()


def test_3d_net_keeps_z_and_downsamples_in_plane():
    model = tiny_3d()
    assert isinstance(model.stem, torch.nn.Conv3d) and model.stem.kernel_size == (3, 3, 3)
    assert model.pool[0].stride == (1, 2, 2) and isinstance(model.out[0], SliceGroupNorm)
    x = torch.randn(2, 1, 5, 32, 32)
    t = torch.tensor([3, 700])
    eps, bottleneck, z, r = model(x, t, torch.randn(2, 34))
    assert eps.shape == (2, 1, 5, 32, 32)
    assert bottleneck.shape == (2, 16, 5, 16, 16)  # z kept, in-plane / stride 2
    assert z.shape == r.shape == (2, 8)
    assert model.encode(x, t).shape == (2, 16, 5, 16, 16)
    (eps.square().mean() + z.square().mean()).backward()  # trains end to end
    assert model.stem.weight.grad is not None and model.proj[0].weight.grad is not None
    # odd in-plane sizes and a depth of one
    eps1, b1, _, _ = model(torch.randn(1, 1, 1, 24, 40), torch.tensor([5]))
    assert eps1.shape == (1, 1, 1, 24, 40) and b1.shape == (1, 16, 1, 12, 20)


def test_z_radius_is_the_encoders_exact_reach_in_z():
    """A change in slice 0 reaches bottleneck slice z_radius and not one further: the halo
    that makes chunked featurisation exact."""
    model = tiny_3d()
    reach = model.cfg.z_radius
    assert reach == 6 and NetConfig(**TINY).z_radius == 0
    x = torch.randn(1, 1, reach + 3, 16, 16)
    y = x.clone()
    y[:, :, 0] += 1.0
    t = torch.tensor([10])
    diff = (model.encode(x, t) - model.encode(y, t)).abs().amax(dim=(0, 1, 3, 4))  # (D,)
    assert diff[reach] > 1e-6
    assert torch.all(diff[reach + 1 :] == 0)


def test_config_errors():
    with pytest.raises(ConfigError, match="dims"):
        NetConfig(dims=4)
    for depth in (1, 4, -3):
        with pytest.raises(ConfigError, match="patch_depth"):
            TrainConfig(patch_depth=depth)
    assert TrainConfig(patch_depth=5).patch_depth == 5
    with pytest.raises(ConfigError, match="patch_depth"):  # 3D net without 3D patches
        check_dims(TrainConfig(), ModelConfig(net=NetConfig(dims=3)))
    with pytest.raises(ConfigError, match="net.dims"):  # 3D patches with a 2D net
        check_dims(TrainConfig(patch_depth=3), ModelConfig())
    check_dims(TrainConfig(patch_depth=3), ModelConfig(net=NetConfig(dims=3)))
    check_dims(TrainConfig(), ModelConfig())
    with pytest.raises(ConfigError, match="z_chunk"):
        FeatureConfig(z_chunk=0)
    with pytest.raises(ConfigError, match="3D model"):  # the 2D function refuses a 3D net
        bottleneck_features_3d(
            LungDenoiser(NetConfig(**TINY)), None, np.zeros((1, 8, 8)), FeatureConfig()
        )
    with pytest.raises(ConfigError, match="2D model"):
        bottleneck_features(tiny_3d(), None, np.zeros((1, 8, 8), np.float32), FeatureConfig())


def test_cli_refuses_3d_net_without_patch_depth(tmp_path, capsys):
    from medrefine.cli import main

    path = tmp_path / "lp.yaml"
    path.write_text("stage: lungpath\nnet: {dims: 3}\n")
    assert (
        main(["train", "--stage", "lungpath", "--config", str(path), "-o", str(tmp_path / "r")])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert "patch_depth" in err and len(err.splitlines()) == 1


def test_weights_without_dims_load_as_2d(tmp_path):
    """The shipped files predate net.dims; a file written without it loads as the 2D net."""
    from medrefine.lungpath.model import load_model, shipped_weights

    shipped = read_info(shipped_weights())
    assert "dims" not in shipped["model"]["net"]
    model, _, _ = load_model(shipped_weights())
    assert model.cfg.dims == 2 and isinstance(model.stem, torch.nn.Conv2d)

    torch.manual_seed(0)
    old = LungDenoiser(NetConfig(**TINY))
    net = {"widths": [8, 16], "time_dim": 16, "proj_dim": 8, "groups": 8}  # no "dims"
    path = save_weights(
        tmp_path / "old.safetensors",
        old,
        {
            "kind": "lungpath",
            "model": {"net": net, "diffusion": {"num_timesteps": 100, "prediction": "epsilon"}},
        },
    )
    loaded, _, _ = load_model(path)
    assert loaded.cfg.dims == 2
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([1, 50])
    assert torch.equal(loaded.encode(x, t), old.eval().encode(x, t))


def test_augment_flips_z_only_for_3d_blocks():
    x3 = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(1, 1, 2 * 3, 4, 4)[:, :, :3]
    zs = set()
    for seed in range(16):
        y = augment(x3, torch.Generator().manual_seed(seed))
        assert y.shape == x3.shape
        # in-plane moves keep each slice's values in that slice; a z flip reverses them
        zs.add(tuple(int(y[0, 0, k].min()) for k in range(3)))
    assert zs == {(0, 16, 32), (32, 16, 0)}
    x2 = torch.randn(4, 1, 8, 8)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = augment(x2, g1)
    assert torch.equal(a, augment(x2.clone(), g2)) and a.shape == x2.shape


def test_load_stacks_from_the_volume_folder(data_root):
    from medrefine.lungpath.data import load_stacks

    stacks = load_stacks(data_root / "covid_ct_lung_infection_ma", "train", limit=6)
    assert len(stacks) == 1 and len(stacks[0]) == 6
    s = stacks[0]
    assert s.image01.shape == s.lung.shape == (6, 256, 256) and s.lung.dtype == bool
    numbers = [int(stem[1:]) for stem in s.stems]
    assert np.all(np.diff(numbers) == 2)  # every second source slice: neighbours
    assert load_stacks(data_root / "medseg_covid_ct_infnet", "train", limit=2) is None


def test_chunked_3d_features_equal_one_pass():
    model = tiny_3d()
    from medrefine.diffusion.gaussian import GaussianDiffusion

    sched = GaussianDiffusion(100, "linear", 1e-4, 0.02, "epsilon")
    cfg = FeatureConfig(timesteps=(5, 60), pool=3)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (11, 16, 24)).astype(np.float32)
    lung = np.ones(x.shape, bool)
    halo = model.cfg.z_radius

    def featurize(stack, _lung, z0):
        return bottleneck_features_3d(model, sched, stack, cfg, z0)

    def chunked(h: int, chunk: int) -> np.ndarray:
        parts = list(z_chunks(featurize, x, lung, chunk, h))
        assert [s for s, _ in parts] == list(range(0, 11, chunk))
        return np.concatenate([f for _, f in parts])

    padded = np.pad(x, ((halo, halo), (0, 0), (0, 0)), mode="edge")
    whole = featurize(padded, None, 0)[halo:-halo]  # one pass over the whole stack
    assert whole.shape == (11, 2 * 16, 8, 12)
    got = chunked(halo, 4)
    np.testing.assert_allclose(got, whole, rtol=1e-4, atol=1e-5)
    assert np.abs(chunked(halo, 3) - whole).max() < 1e-4
    # too short a halo is not the same: the check can fail
    short = np.concatenate([f for _, f in z_chunks(featurize, x, lung, 4, 1)])
    assert np.abs(short - whole).max() > 1e-3
    # a single slice is a stack of one slice, replicate-padded in z
    one = np.concatenate([f for _, f in z_chunks(featurize, x[:1], lung[:1], 4, halo)])
    assert one.shape == (1, 32, 8, 12) and np.all(np.isfinite(one))


def toy_chest(depth: int) -> np.ndarray:
    hu = np.full((depth, 64, 64), -850.0, np.float32)  # body wall, two "lungs"
    hu[:, :4], hu[:, -4:], hu[:, :, :4], hu[:, :, -4:] = 40, 40, 40, 40
    hu[:, :, 30:34] = 40  # mediastinum
    hu[:, 0, :] = -1000  # outside air along the top row
    hu[:, 20:28, 10:20] = -500  # a denser patch
    return hu


def test_tiny_3d_training_run_drives_the_pipeline(tmp_path, data_root, caplog):
    """Both stages on a few real Ma slices (3 x 32 x 32 blocks), then the pipeline on a toy
    HU volume and on a single slice with the 3D weights."""
    from medrefine.cli import main
    from medrefine.io import LoadedImage
    from medrefine.lungpath.model import load_model
    from medrefine.lungpath.pipeline import InferenceConfig, LungPathologyPipeline

    config = {
        "stage": "lungpath",
        "net": {"widths": [8, 16], "time_dim": 16, "proj_dim": 8, "dims": 3},
        "diffusion": {"num_timesteps": 100, "prediction": "epsilon"},
        "train": {
            "data_dirs": [
                str(data_root / "covid_ct_lung_infection_ma"),
                str(data_root / "medseg_covid_ct_infnet"),
            ],
            "patch_depth": 3,
            "n_patches": 16,
            "max_slices": 5,
            "batch_size": 4,
            "stage1_steps": 2,
            "stage2_steps": 2,
            "warmup_steps": 1,
            "log_every": 1,
            "distill_max_t": 100,
        },
    }
    path = tmp_path / "lp3d.yaml"
    path.write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    caplog.set_level("INFO", logger="medrefine.lungpath.train")
    assert main(["train", "--stage", "lungpath", "--config", str(path), "-o", str(run)]) == 0
    assert "medseg_covid_ct_infnet: single slices" in caplog.text
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == [1, 1, 2, 2] and rows[-1]["infonce"] > 0
    info = read_info(run / "stage2.safetensors")
    assert info["model"]["net"]["dims"] == 3
    assert info["training"]["patch_depth"] == 3 and info["training"]["stacks"] == 1
    assert info["training"]["patches"] == 16 and info["training"]["slices"] == 5
    model, _, _ = load_model(run / "stage2.safetensors")
    assert isinstance(model.stem, torch.nn.Conv3d)

    cfg = InferenceConfig(features=FeatureConfig(timesteps=(5, 50), z_chunk=2))
    pipe = LungPathologyPipeline(run / "stage2.safetensors", cfg)
    hu = toy_chest(5)
    result = pipe.run(
        LoadedImage(hu[None], (1.0, 1.0, 1.0), {"format": "nifti", "source_dtype": "int16"})
    )
    assert result.labels.shape == hu.shape and result.labels.dtype == np.uint8
    assert result.labels.max() <= 5 and result.labels[result.lung].min() >= 1
    assert result.params["net_dims"] == 3 and result.params["z_halo"] == 6
    single = pipe.run(
        LoadedImage(hu[2][None], (1.0, 1.0), {"format": "nifti", "source_dtype": "int16"})
    )
    assert single.labels.shape == (64, 64) and single.labels[single.lung].min() >= 1


@pytest.mark.slow
def test_3d_training_under_torchrun(data_root, torchrun_lungpath):
    """Two CPU processes (gloo DDP) train the 3D net as they do the 2D one."""
    _, run = torchrun_lungpath(
        {
            "stage": "lungpath",
            "net": {"widths": [8, 16], "time_dim": 16, "proj_dim": 8, "dims": 3},
            "diffusion": {"num_timesteps": 100, "prediction": "epsilon"},
            "train": {
                "data_dirs": [str(data_root / "covid_ct_lung_infection_ma")],
                "patch_depth": 3,
                "n_patches": 16,
                "max_slices": 4,
                "batch_size": 4,
                "stage1_steps": 2,
                "stage2_steps": 2,
                "log_every": 1,
                "distill_max_t": 100,
            },
        }
    )
    info = read_info(run / "stage2.safetensors")
    assert info["training"]["world_size"] == 2 and info["model"]["net"]["dims"] == 3
