"""Fusing several sampled masks into one, and turning their spread into uncertainty.

mean (soft average), majority vote, or STAPLE (Warfield et al. 2004, binary EM estimating each
sample's sensitivity/specificity), as MedSegDiff / MB-Diff fuse diffusion samples.
"""

from __future__ import annotations

import numpy as np

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


def review_score(uncertainty: np.ndarray, mask: np.ndarray, min_area: float = 0.01) -> float:
    """How much of the mask is in doubt: the summed uncertainty divided by the mask's area
    (at least ``min_area`` of the image, so an empty or tiny mask does not divide by ~0).

    Where the uncertainty is a per-pixel error probability, this estimates the share of the
    mask that may be wrong, which is what 1 - Dice measures: a thin band of doubt around a
    large lesion scores low, the same band around a small one, or doubt far from the mask,
    scores high. High = worth a human look; 0 for a certain mask. (Chosen on the val splits
    over the mean uncertainty in a boundary band: Spearman rho with 1 - Dice 0.67 vs 0.56 on
    PH2 val, 0.76 vs 0.65 on CXR lungs val.)"""
    mask = mask.astype(bool)
    area = max(float(mask.sum()), min_area * mask.size, 1.0)
    return float(np.asarray(uncertainty, dtype=np.float64).sum() / area)


# Weight of the second opinion in the review score of a mask that came from elsewhere (another
# tool's mask, a box): chosen on the val splits (``scripts/review_score_study.py``) as the
# weight whose worst source is best, among 0-16: Spearman rho with 1 - Dice, worst of the eight
# val sources (polyp, skin, lung: two held-out segmenters each, polyp and skin boxes) 0.009
# with the uncertainty alone, 0.502 at 5 (mean 0.469 -> 0.709); 6 was within 0.01 (0.510), the
# lower weight was kept.
SECOND_OPINION_WEIGHT = 5.0


def mask_disagreement(a: np.ndarray, b: np.ndarray) -> float:
    """1 - Dice between two binary masks (0 when both are empty)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    total = float(a.sum() + b.sum())
    return 0.0 if total == 0 else 1.0 - 2.0 * float((a & b).sum()) / total


def second_opinion_score(review: float, disagreement: float,
                         weight: float = SECOND_OPINION_WEIGHT, coarse_doubt: float = 0.0,
                         doubt_weight: float = 0.0) -> float:
    """The review score of a mask that came from elsewhere: the refined mask's own doubt
    (``review_score``) plus ``weight`` x its disagreement (1 - Dice) with the preset's coarse
    model on the same image. Two independent models that disagree flag a mask worth a human
    look even where the refiner is sure of its correction: on the val splits the uncertainty
    alone ranked other segmenters' refined masks by their error with Spearman rho 0.01-0.71,
    with the second opinion 0.50-0.91.

    Where the image itself is hard (a lung field clouded by opacities), both models may agree
    on the same wrong mask; ``doubt_weight`` x ``coarse_doubt``, the coarse model's own doubt
    of the image (``review_score`` of the entropy of its probabilities over its mask), flags
    those too. The weight is the preset's (``Preset.review_doubt_weight``, chosen on val)."""
    return float(review + weight * disagreement + doubt_weight * coarse_doubt)

