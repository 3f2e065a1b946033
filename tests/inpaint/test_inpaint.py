"""The inpainting system: masks, model file, sampling loop, blending, pipeline, training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from inpaint_helpers import TINY, xray_like

from medrefine.checkpoint import save_weights
from medrefine.errors import ConfigError, InputError
from medrefine.inpaint import masks as M
from medrefine.inpaint.blend import blend
from medrefine.inpaint.model import (
    InpaintModelConfig,
    build_model,
    build_schedule,
    load_inpainter,
    prefill,
    to_unit,
)
from medrefine.inpaint.pipeline import InpaintingPipeline, check_mask
from medrefine.inpaint.sample import sample_fill


@pytest.mark.parametrize("kind", ["ribs", "strokes", "box"])
def test_masks_are_seeded_partial_and_sized(kind):
    a = M.make_mask(kind, (96, 80), np.random.default_rng(3))
    b = M.make_mask(kind, (96, 80), np.random.default_rng(3))
    assert a.shape == (96, 80) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert 0 < a.sum() < a.size
    if kind == "box":
        ys, xs = np.nonzero(a)
        assert 0.14 <= (np.ptp(ys) + 1) / 96 <= 0.26 and 0.14 <= (np.ptp(xs) + 1) / 80 <= 0.26


def test_ribs_cover_both_lung_fields():
    mask = M.rib_bands((128, 128), np.random.default_rng(0))
    assert mask[:, :60].sum() > 0 and mask[:, 68:].sum() > 0


def test_device_masks_come_from_real_outlines():
    labels = np.zeros((256, 256), np.uint8)
    labels[100:104, 20:200] = 2  # a tube
    outlines = M.device_outlines([labels])
    assert len(outlines) == 1 and outlines[0].shape == (4, 180)
    mask = M.device_mask((256, 256), np.random.default_rng(1), outlines)
    assert mask.sum() >= 4 * 0.8 * 180 * 0.8


def test_weights_round_trip_and_kind_check(tiny_inpaint_weights, tiny_weights):
    model, cfg, info = load_inpainter(tiny_inpaint_weights)
    assert cfg == TINY and info["kind"] == "inpaint"
    with pytest.raises(InputError, match="not an inpainting weights file"):
        load_inpainter(tiny_weights["coarse"])


def test_to_unit_maps_known_pixels_back_exactly():
    image = np.array([[100, 4000], [7, 65535]], np.uint16)
    hole = np.array([[0, 0], [0, 1]], np.uint8)
    image01, lo, hi = to_unit(image, hole)
    assert lo == 7 and hi == 4000
    back = image01 * (hi - lo) + lo
    assert np.allclose(back[hole == 0], image[hole == 0])


def test_prefill_fills_only_the_hole():
    rng = np.random.default_rng(0)
    image01 = xray_like(rng, (32, 32)).astype(np.float32) / 255
    hole = np.zeros((32, 32), np.uint8)
    hole[10:20, 8:24] = 1
    out = prefill(image01, hole)
    assert np.array_equal(out[hole == 0], image01[hole == 0])
    # a smooth fill from the surroundings, not zeros or noise
    assert abs(out[hole > 0].mean() - image01[hole > 0].mean()) < 0.15


def test_biharmonic_prefill_continues_a_smooth_image_and_an_untrained_net_returns_it():
    yy, xx = np.mgrid[:32, :32] / 31.0
    image01 = (0.2 + 0.5 * xx + 0.2 * yy**2).astype(np.float32)  # smooth: biharmonic recovers it
    hole = np.zeros((32, 32), np.uint8)
    hole[10:22, 9:25] = 1
    out = prefill(image01, hole, "biharmonic")
    assert np.array_equal(out[hole == 0], image01[hole == 0])
    assert np.abs(out - image01)[hole > 0].max() < 0.01
    telea = prefill(image01, hole, "telea")
    assert np.abs(telea - image01)[hole > 0].mean() > np.abs(out - image01)[hole > 0].mean()
    with pytest.raises(ConfigError, match="prefill"):
        prefill(image01, hole, "nearest")
    # the zero-initialised head: training starts from the classical fill it is given
    cfg = InpaintModelConfig(size=32, prefill="biharmonic", net=TINY.net)
    model = build_model(cfg).eval()
    fill, _ = sample_fill(model, build_schedule(cfg), image01, hole, out, steps=1, samples=1)
    assert np.abs(fill - out).max() < 1e-3


def test_model_config_checks_the_prefill_and_old_files_mean_telea():
    with pytest.raises(ConfigError, match="prefill"):
        InpaintModelConfig(prefill="nearest")
    data = TINY.to_dict()
    del data["prefill"]
    assert InpaintModelConfig.from_dict(data).prefill == "telea"


def test_sampling_keeps_known_pixels_and_repeats_with_a_seed(tiny_inpaint_weights):
    model, cfg, _ = load_inpainter(tiny_inpaint_weights)
    schedule = build_schedule(cfg)
    rng = np.random.default_rng(0)
    image01 = xray_like(rng, (32, 32)).astype(np.float32) / 255
    hole = M.box((32, 32), rng, 0.3, 0.4)
    pre = prefill(image01, hole)
    a, spread = sample_fill(model, schedule, image01, hole, pre, steps=3, samples=2, seed=5)
    b, _ = sample_fill(model, schedule, image01, hole, pre, steps=3, samples=2, seed=5)
    c, _ = sample_fill(model, schedule, image01, hole, pre, steps=3, samples=2, seed=6)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.array_equal(a[hole == 0], image01[hole == 0])
    assert (spread[hole == 0] == 0).all() and spread[hole > 0].max() > 0
    assert 0 <= a.min() and a.max() <= 1


@pytest.mark.parametrize("mode", ["hard", "feather", "poisson"])
def test_blends_touch_only_the_hole_and_its_ring(mode):
    rng = np.random.default_rng(1)
    original = rng.random((40, 40)).astype(np.float32)
    fill = np.full((40, 40), 0.5, np.float32)
    hole = np.zeros((40, 40), np.uint8)
    hole[15:25, 12:30] = 1
    out = blend(original, fill, hole, mode, radius=2)
    far = np.ones_like(hole)
    far[12:28, 9:33] = 0
    assert np.array_equal(out[far > 0], original[far > 0])
    if mode != "feather":
        assert np.array_equal(out[hole == 0], original[hole == 0])
    if mode == "hard":
        assert np.all(out[hole > 0] == 0.5)
    with pytest.raises(ConfigError):
        blend(original, fill, hole, "smudge")


def test_pipeline_keeps_size_dtype_and_known_pixels(tiny_inpaint_weights):
    pipe = InpaintingPipeline(weights=tiny_inpaint_weights, seed=0)
    rng = np.random.default_rng(2)
    image = xray_like(rng, (50, 45)).astype(np.uint16) * 257  # 16-bit
    hole = M.strokes(image.shape, rng)
    result = pipe.run(image, hole * 255)
    assert result.inpainted.shape == image.shape and result.inpainted.dtype == np.uint16
    assert np.array_equal(result.inpainted[hole == 0], image[hole == 0])
    assert not np.array_equal(result.inpainted[hole > 0], image[hole > 0])
    again = InpaintingPipeline(weights=tiny_inpaint_weights, seed=0).run(image, hole)
    assert np.array_equal(result.inpainted, again.inpainted)
    assert set(result.timings) >= {"sample", "total"}


def test_bad_masks_are_one_clear_error():
    with pytest.raises(InputError, match="mask is 10x12 but the image is 10x10"):
        check_mask(np.ones((10, 12)), (10, 10), "m.png")
    with pytest.raises(InputError, match="empty"):
        check_mask(np.zeros((10, 10)), (10, 10))
    with pytest.raises(InputError, match="whole image"):
        check_mask(np.full((10, 10), 255), (10, 10))
    most = np.full((10, 10), 255)
    most[0, :9] = 0  # 9% known: too little to fill from
    with pytest.raises(InputError, match=r"leaves 9.0% of the image known; .* at least 10%"):
        check_mask(most, (10, 10), "m.png")
    most[1, :2] = 0  # 11% known
    assert check_mask(most, (10, 10)).sum() == 89


def test_too_little_context_on_the_model_grid_is_refused(tiny_inpaint_weights):
    """Known pixels scattered in a fine grid pass at full size, but on the model's grid
    every pixel touches the hole: refused there, in one line, not a crash inside sampling."""
    image = (np.random.default_rng(0).random((256, 256)) * 4000).astype(np.uint16)
    hole = np.ones((256, 256), np.uint8)
    hole[::3, ::3] = 0  # 11% known, none of it a whole grid pixel of the 32-px model
    with pytest.raises(InputError, match="on the model's"):
        InpaintingPipeline(weights=tiny_inpaint_weights).run(image, hole)


def test_pipeline_refuses_bad_settings(tiny_inpaint_weights, tmp_path):
    with pytest.raises(ConfigError):
        InpaintingPipeline(weights=tiny_inpaint_weights, blend="smudge")
    with pytest.raises(ConfigError, match="not found"):
        InpaintingPipeline(weights=tmp_path / "none.safetensors")


def test_training_runs_and_writes_loadable_weights(tiny_cxr_data, tmp_path):
    from medrefine.inpaint.train import InpaintTrainConfig, train_inpaint

    cfg = InpaintTrainConfig(
        data_dirs=(str(tiny_cxr_data),),
        device_dir=str(tiny_cxr_data),
        output_dir=str(tmp_path / "run"),
        model=TINY,
        crop=32,
        batch_size=2,
        steps_per_epoch=2,
        epochs=2,
        val_cases=2,
    )
    run = train_inpaint(cfg)
    model, cfg2, info = load_inpainter(run / "best.safetensors")
    assert cfg2 == TINY and info["device_outlines"] >= 3 and info["train_cases"] == 3
    rows = [line for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    assert len(rows) == 2
    assert isinstance(model, torch.nn.Module)


def test_training_runs_unchanged_under_torchrun(tiny_cxr_data, tmp_path, torchrun_env):
    """Two gloo processes (DDP) run the same train command; rank 0 writes the weights."""
    import json
    import subprocess
    import sys

    import yaml

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "stage": "inpaint",
                "inpaint": {
                    "data_dirs": [str(tiny_cxr_data)],
                    "device_dir": str(tiny_cxr_data),
                    "model": {**TINY.to_dict(), "prefill": "biharmonic"},
                    "crop": 32,
                    "batch_size": 2,
                    "steps_per_epoch": 2,
                    "epochs": 2,
                    "val_cases": 2,
                },
            }
        )
    )
    out = tmp_path / "run"
    proc = subprocess.run(
        [
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
            "--device",
            "cpu",
            "-o",
            str(out),
        ],
        env=torchrun_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-6000:]
    _, cfg2, info = load_inpainter(out / "best.safetensors")
    assert cfg2.prefill == "biharmonic" and info["world_size"] == 2
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]  # written once, by rank 0


def test_train_config_is_checked():
    from medrefine.inpaint.train import InpaintTrainConfig

    with pytest.raises(ConfigError):
        InpaintTrainConfig(model=TINY, crop=48)
    with pytest.raises(ConfigError):
        InpaintTrainConfig(data_dirs=())


def test_save_weights_of_another_model_is_refused(tmp_path):
    path = save_weights(tmp_path / "x.safetensors", torch.nn.Linear(2, 2), {"kind": "coarse"})
    with pytest.raises(InputError):
        InpaintingPipeline(weights=path)
