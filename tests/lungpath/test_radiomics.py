"""The radiomic teacher: GLCM against the IBSI definitions computed by hand, and the descriptor."""

from __future__ import annotations

import numpy as np
from skimage.feature import graycoprops

from medrefine.lungpath.radiomics import (
    RadiomicsConfig,
    descriptor,
    glcm,
    glcm_features,
    quantise,
)

HARALICK = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [0, 2, 2, 2], [2, 2, 3, 3]], np.uint8)


def hand_counts(q, levels, directions=((0, 1), (-1, 1), (-1, 0), (-1, -1)), symmetric=True):
    """Co-occurrence counts at distance 1 (default: 0, 45, 90, 135 degrees, merged)."""
    counts = np.zeros((levels, levels))
    h, w = q.shape
    for dy, dx in directions:
        for y in range(h):
            for x in range(w):
                y2, x2 = y + dy, x + dx
                if 0 <= y2 < h and 0 <= x2 < w:
                    counts[q[y, x], q[y2, x2]] += 1
                    if symmetric:
                        counts[q[y2, x2], q[y, x]] += 1
    return counts


def hand_glcm(q: np.ndarray, levels: int) -> np.ndarray:
    """The merged symmetric GLCM as probabilities (IBSI 3.6)."""
    counts = hand_counts(q, levels)
    return counts / counts.sum()


def ibsi_features(p: np.ndarray) -> dict[str, float]:
    """IBSI reference manual 3.6 definitions, written as plain sums (grey levels from 1)."""
    n = len(p)
    out = dict.fromkeys(
        ("contrast", "dissimilarity", "idm", "asm", "entropy", "tendency", "shade", "prominence"),
        0.0,
    )
    mu_i = sum((i + 1) * p[i, j] for i in range(n) for j in range(n))
    mu_j = sum((j + 1) * p[i, j] for i in range(n) for j in range(n))
    var_i = sum((i + 1 - mu_i) ** 2 * p[i, j] for i in range(n) for j in range(n))
    var_j = sum((j + 1 - mu_j) ** 2 * p[i, j] for i in range(n) for j in range(n))
    cov = sum((i + 1 - mu_i) * (j + 1 - mu_j) * p[i, j] for i in range(n) for j in range(n))
    for i in range(n):
        for j in range(n):
            v = p[i, j]
            out["contrast"] += (i - j) ** 2 * v
            out["dissimilarity"] += abs(i - j) * v
            out["idm"] += v / (1 + (i - j) ** 2)
            out["asm"] += v * v
            out["entropy"] -= v * np.log2(v) if v > 0 else 0.0
            s = i + 1 + j + 1 - mu_i - mu_j
            out["tendency"] += s**2 * v
            out["shade"] += s**3 * v
            out["prominence"] += s**4 * v
    out["correlation"] = cov / np.sqrt(var_i * var_j)
    out["joint_max"] = p.max()
    return out


def test_glcm_of_haralicks_example():
    # the textbook 0-degree counts of this image (Haralick 1973; scikit-image's example)
    zero = np.array([[2, 2, 1, 0], [0, 2, 0, 0], [0, 0, 3, 1], [0, 0, 0, 1]])
    np.testing.assert_array_equal(hand_counts(HARALICK, 4, [(0, 1)], symmetric=False), zero)
    p = glcm(HARALICK, 4)
    np.testing.assert_allclose(p, hand_glcm(HARALICK, 4))
    # 12 + 9 + 12 + 9 neighbour pairs in a 4x4 image, each counted both ways
    np.testing.assert_allclose(p * 84, np.round(p * 84), atol=1e-9)
    np.testing.assert_allclose(p, p.T)


def test_glcm_features_follow_the_ibsi_definitions():
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = rng.uniform(-1, 1, (12, 12)).astype(np.float32)
        x[:6] = np.round(x[:6], 1)  # some structure
        q = quantise(x, 8)
        p = glcm(q, 8)
        np.testing.assert_allclose(p, hand_glcm(q, 8), atol=1e-12)
        ours = dict(
            zip(
                (
                    "contrast",
                    "dissimilarity",
                    "idm",
                    "asm",
                    "correlation",
                    "entropy",
                    "joint_max",
                    "tendency",
                    "shade",
                    "prominence",
                ),
                glcm_features(p),
                strict=True,
            )
        )
        ref = ibsi_features(p)
        for key, value in ref.items():
            assert np.isclose(ours[key], value, rtol=1e-9, atol=1e-12), key
        # and the five that scikit-image also defines
        sk = p[:, :, None, None]
        assert np.isclose(ours["contrast"], graycoprops(sk, "contrast")[0, 0])
        assert np.isclose(ours["dissimilarity"], graycoprops(sk, "dissimilarity")[0, 0])
        assert np.isclose(ours["idm"], graycoprops(sk, "homogeneity")[0, 0])
        assert np.isclose(ours["asm"], graycoprops(sk, "ASM")[0, 0])
        assert np.isclose(ours["correlation"], graycoprops(sk, "correlation")[0, 0])


def test_quantisation_is_fixed_bin_width():
    edges = np.array([-1.0, -1 + 2 / 32 - 1e-6, -1 + 2 / 32, 0.0, 1.0])
    np.testing.assert_array_equal(quantise(edges, 32), [0, 0, 1, 16, 31])


def test_descriptor_has_34_finite_values_and_tells_textures_apart():
    rng = np.random.default_rng(1)
    flat = np.full((32, 32), -0.8, np.float32)
    noisy = np.clip(-0.6 + 0.3 * rng.standard_normal((32, 32)), -1, 1).astype(np.float32)
    d_flat, d_noisy = descriptor(flat), descriptor(noisy)
    assert d_flat.shape == (RadiomicsConfig().dim,) == (34,)
    assert np.isfinite(d_flat).all() and np.isfinite(d_noisy).all()
    assert d_flat[0] == 0 and d_flat[3] == 1  # contrast 0, ASM 1 on a constant patch
    assert d_noisy[0] > 1 and d_noisy[5] > d_flat[5]  # contrast, entropy
    assert abs(d_flat[28] - -0.8) < 1e-6 and d_noisy[29] > 0.2  # mean, std
