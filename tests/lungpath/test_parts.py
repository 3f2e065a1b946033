"""Naming rules, Sobel fusion, features and clustering on small hand-made cases."""

from __future__ import annotations

import numpy as np
import torch

from medrefine.diffusion.gaussian import GaussianDiffusion
from medrefine.lungpath.cluster import ClusterConfig, cluster_posteriors
from medrefine.lungpath.features import FeatureConfig, bottleneck_features
from medrefine.lungpath.fusion import FusionConfig, fuse
from medrefine.lungpath.labels import LABELS
from medrefine.lungpath.naming import (
    NamingConfig,
    emphysema_pixels,
    lung_ranks,
    name_cluster,
    name_clusters,
)
from medrefine.lungpath.net import LungDenoiser, NetConfig


def test_hu_rules():
    cfg = NamingConfig()
    assert name_cluster(-850, 60, 0.0, "hu", cfg) == LABELS["healthy"]
    assert name_cluster(-960, 30, 0.8, "hu", cfg) == LABELS["emphysema"]
    assert name_cluster(-960, 30, 0.1, "hu", cfg) == LABELS["healthy"]  # low but no LAA
    assert name_cluster(-550, 80, 0.0, "hu", cfg) == LABELS["ground_glass"]
    assert name_cluster(-550, 300, 0.0, "hu", cfg) == LABELS["fibrosis"]
    assert name_cluster(-100, 50, 0.0, "hu", cfg) == LABELS["consolidation"]
    stats = np.array([[-850, 60, 0], [np.nan, np.nan, np.nan], [-100, 50, 0]])
    np.testing.assert_array_equal(name_clusters(stats, "hu", cfg), [1, 1, 4])


def test_rank_rules_never_name_emphysema():
    cfg = NamingConfig(ground_glass_rank=0.7, consolidation_rank=0.9)
    assert name_cluster(0.01, 0.0, 1.0, "rank", cfg) == LABELS["healthy"]
    assert name_cluster(0.8, 0.1, 0.0, "rank", cfg) == LABELS["ground_glass"]
    assert name_cluster(0.95, 0.1, 0.0, "rank", cfg) == LABELS["consolidation"]
    v = np.array([[5.0, 1.0], [3.0, 9.0]])
    np.testing.assert_allclose(
        lung_ranks(v, np.array([[1, 1], [1, 0]], bool)), [[1.0, 1 / 3], [2 / 3, 0.0]]
    )


def test_emphysema_pixels_are_low_attenuation_inside_healthy_clusters_only():
    labels = np.full((10, 10), LABELS["healthy"], np.uint8)
    labels[:, 5:] = LABELS["ground_glass"]
    labels[0] = 0  # outside the lung
    hu = np.full((10, 10), -850.0, np.float32)
    hu[2:4, 1:3] = -975.0  # emphysema in healthy parenchyma
    hu[2:4, 7:9] = -975.0  # air inside a ground-glass cluster: not emphysema
    hu[0, :] = -1000.0  # outside the lung
    hu[5, 1] = -949.0  # just above the threshold
    emph = emphysema_pixels(labels, hu, NamingConfig())
    assert emph.sum() == 4 and emph[2:4, 1:3].all()


def test_sobel_fusion_moves_a_boundary_onto_the_edge():
    h, w = 32, 48
    value = np.zeros((h, w), np.float32)
    value[:, 26:] = 1.0  # the true edge between columns 25 and 26
    ramp = np.clip((np.arange(w) - 14) / 12, 0, 1).astype(np.float32)  # coarse: mid at 20
    post = np.stack([np.tile(1 - ramp, (h, 1)), np.tile(ramp, (h, 1))])
    lung = np.ones((h, w), bool)
    before = post.argmax(0)
    after = fuse(post, value, lung, FusionConfig(weight=1.0, smooth_sigma=0.0)).argmax(0)
    assert (before[:, 21:26] == 1).all()  # the features alone put the boundary too far left
    assert (after[:, :26] == 0).all() and (after[:, 26:] == 1).all()  # fused: on the edge
    same = fuse(post, value, lung, FusionConfig(weight=0.0))
    np.testing.assert_array_equal(same, post)


def test_features_are_multi_timestep_and_seeded():
    torch.manual_seed(0)
    model = LungDenoiser(NetConfig(widths=(8, 16))).eval()
    sched = GaussianDiffusion(100, prediction="epsilon")
    x = np.random.default_rng(0).uniform(-1, 1, (3, 16, 24)).astype(np.float32)
    cfg = FeatureConfig(timesteps=(0, 50), pool=2, slice_batch=2)
    f1 = bottleneck_features(model, sched, x, cfg)
    f2 = bottleneck_features(model, sched, x, cfg)
    assert f1.shape == (3, 2 * 16, 8, 12)
    np.testing.assert_array_equal(f1, f2)
    # the first batch at t = 0: one encoder pass on x noised by the seeded noise, no sampling
    noise = torch.randn((2, 1, 16, 24), generator=torch.Generator().manual_seed(cfg.noise_seed))
    zero = torch.zeros(2, dtype=torch.long)
    with torch.no_grad():
        x_t = sched.add_noise(torch.from_numpy(x[:2])[:, None], noise, zero)
        direct = model.encode(x_t, zero)
        direct = torch.nn.functional.avg_pool2d(direct, 2, 1, 1, count_include_pad=False)
    np.testing.assert_allclose(f1[:2, :16], direct[..., :8, :12].numpy(), atol=1e-5)


def test_gmm_separates_two_blobs_and_falls_back_on_few_points():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 0.1, (300, 6))
    b = rng.normal(3, 0.1, (300, 6))
    post = cluster_posteriors(np.concatenate([a, b]), ClusterConfig(k=2, pca_dims=3))
    hard = post.argmax(1)
    assert len(set(hard[:300])) == 1 and len(set(hard[300:])) == 1 and hard[0] != hard[-1]
    tiny = cluster_posteriors(rng.normal(size=(6, 4)), ClusterConfig(k=5))
    assert tiny.shape == (6, 1)


def test_shipped_config_inference_sections_are_the_defaults():
    from pathlib import Path

    from medrefine.lungpath.pipeline import InferenceConfig, load_inference_config

    root = Path(__file__).resolve().parents[2]
    assert load_inference_config(root / "configs" / "lungpath.yaml") == InferenceConfig()


def test_a_replacement_featurize_is_a_constructor_setting():
    """The ablation's radiomics row: the pipeline built with its own 2D featuriser, which then
    sees every batch of lung slices in place of the model's bottleneck features."""
    from medrefine.io import LoadedImage
    from medrefine.lungpath.pipeline import InferenceConfig, LungPathologyPipeline

    calls = []

    def featurize(x, lung):
        calls.append(x.shape)
        return np.stack([x, x**2])[:, :, ::8, ::8].transpose(1, 0, 2, 3).astype(np.float32)

    rng = np.random.default_rng(0)
    image = np.full((128, 128), 200.0, np.float32)
    image[24:104, 16:112] = rng.uniform(20, 120, (80, 96))
    lung = np.zeros((128, 128), bool)
    lung[24:104, 16:112] = True
    pipe = LungPathologyPipeline(config=InferenceConfig(intensity="rank"), featurize=featurize)
    loaded = LoadedImage(image[None], None, {"format": "png", "source_dtype": "uint8"}, None)
    result = pipe.run(loaded, lung)
    assert calls and all(len(shape) == 3 for shape in calls)
    assert result.labels.shape == (128, 128) and (result.labels[~lung] == 0).all()
    assert (result.labels[lung] > 0).all()
