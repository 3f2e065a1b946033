"""Fusing several sampled masks into one, and turning their spread into uncertainty.

mean (soft average), majority vote, or STAPLE (Warfield et al. 2004, binary EM estimating each
sample's sensitivity/specificity), as MedSegDiff / MB-Diff fuse diffusion samples.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from medrefine.errors import ConfigError

FUSIONS = ("mean", "vote", "staple")


def fuse(samples: np.ndarray, method: str = "mean") -> np.ndarray:
    """samples (N, H, W) probabilities in [0, 1] -> fused probabilities (H, W)."""
    if method == "mean":
        return samples.mean(0)
    if method == "vote":
        return (samples > 0.5).mean(0).astype(np.float32)
    if method == "staple":
        return staple(samples > 0.5)
    raise ConfigError(f"unknown fusion {method!r}; choose from {FUSIONS}")


def staple(decisions: np.ndarray, iterations: int = 20, tol: float = 1e-5) -> np.ndarray:
    """Binary STAPLE: decisions (N, ...) bool -> posterior foreground probability (...)."""
    d = decisions.reshape(decisions.shape[0], -1).astype(np.float64)
    if d.shape[0] == 1:
        return decisions[0].astype(np.float32)
    prior = float(np.clip(d.mean(), 1e-6, 1 - 1e-6))
    p = np.full(d.shape[0], 0.99)  # sensitivities
    q = np.full(d.shape[0], 0.99)  # specificities
    w = d.mean(0)
    for _ in range(iterations):
        a = prior * np.prod(np.where(d, p[:, None], 1 - p[:, None]), axis=0)
        b = (1 - prior) * np.prod(np.where(d, 1 - q[:, None], q[:, None]), axis=0)
        w_new = a / np.maximum(a + b, 1e-300)
        p = (d * w_new).sum(1) / max(w_new.sum(), 1e-12)
        q = ((1 - d) * (1 - w_new)).sum(1) / max((1 - w_new).sum(), 1e-12)
        done = np.abs(w_new - w).max() < tol
        w = w_new
        if done:
            break
    return w.reshape(decisions.shape[1:]).astype(np.float32)


def binary_entropy(probs: np.ndarray) -> np.ndarray:
    """Entropy in bits of a Bernoulli probability map: 0 where certain, 1 at p = 0.5."""
    p = np.clip(probs, 1e-6, 1 - 1e-6)
    return (-(p * np.log2(p) + (1 - p) * np.log2(1 - p))).astype(np.float32)


def review_score(uncertainty: np.ndarray, mask: np.ndarray, band: int = 3) -> float:
    """Mean uncertainty in a band of ``band`` pixels around the mask boundary, plus the share
    of uncertain pixels far from it. High = worth a human look. 0 for empty, certain masks."""
    mask = mask.astype(bool)
    if mask.any():
        ring = ndi.binary_dilation(mask, iterations=band) & ~ndi.binary_erosion(mask,
                                                                                iterations=band)
    else:
        ring = np.zeros_like(mask)
    near = float(uncertainty[ring].mean()) if ring.any() else 0.0
    far = float((uncertainty[~ring] > 0.5).mean()) if (~ring).any() else 0.0
    return near + far
