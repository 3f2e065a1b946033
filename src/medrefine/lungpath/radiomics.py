"""The radiomic teacher: a 34-dim texture descriptor of a CT patch, computed, not learned.

    GLCM (10) + LBP (10) + Gabor (8) + intensity statistics (6) = 34

All on the normalised image (``hu.normalise_hu``: [-1, 1]), quantised with a fixed bin width
over [-1, 1] (IBSI "fixed bin number over a fixed range": 32 bins of 43.75 HU).

- GLCM: one symmetric matrix at distance 1 merged over the four 2D directions (0, 45, 90,
  135 degrees) and normalised to probabilities (IBSI 3.6, "merged" 2D aggregation); features
  by the IBSI definitions (IBSI reference manual, sec. 3.6): contrast, dissimilarity,
  inverse difference moment (homogeneity), angular second moment, correlation, joint
  entropy (log2), joint maximum, cluster tendency, cluster shade, cluster prominence.
- LBP: uniform rotation-invariant LBP (P = 8, R = 1; Ojala et al. 2002), its 10-bin histogram.
- Gabor: mean magnitude of the complex Gabor response at 2 wavelengths x 4 orientations.
- Intensity: mean, standard deviation, skewness, excess kurtosis, 10th and 90th percentile.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from skimage.feature import graycomatrix, local_binary_pattern

from medrefine.errors import ConfigError

GLCM_NAMES = (
    "contrast",
    "dissimilarity",
    "idm",
    "asm",
    "correlation",
    "joint_entropy",
    "joint_max",
    "cluster_tendency",
    "cluster_shade",
    "cluster_prominence",
)
ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)


@dataclass(frozen=True)
class RadiomicsConfig:
    levels: int = 32
    lbp_points: int = 8
    lbp_radius: float = 1.0
    gabor_wavelengths: tuple[float, ...] = (4.0, 8.0)
    gabor_orientations: int = 4

    def __post_init__(self):
        if (
            self.levels < 2
            or self.lbp_points != 8
            or len(self.gabor_wavelengths) != 2
            or self.gabor_orientations != 4
        ):
            raise ConfigError(
                "radiomics: the 34-dim descriptor needs levels >= 2, "
                "lbp_points 8, 2 Gabor wavelengths and 4 orientations"
            )

    @property
    def dim(self) -> int:
        return len(GLCM_NAMES) + (self.lbp_points + 2) + 8 + 6


def quantise(x: np.ndarray, levels: int) -> np.ndarray:
    """[-1, 1] -> integer grey levels 0..levels-1 (fixed bin width 2 / levels)."""
    q = np.floor((np.clip(x, -1.0, 1.0) + 1.0) / 2.0 * levels).astype(np.int64)
    return np.clip(q, 0, levels - 1).astype(np.uint8)


def glcm(q: np.ndarray, levels: int) -> np.ndarray:
    """The merged, symmetric, normalised GLCM (levels, levels) of a quantised 2D patch."""
    counts = graycomatrix(q, [1], list(ANGLES), levels=levels, symmetric=True, normed=False)
    merged = counts[:, :, 0, :].sum(axis=-1).astype(np.float64)
    total = merged.sum()
    return merged / total if total > 0 else merged


def glcm_features(p: np.ndarray) -> np.ndarray:
    """The 10 IBSI GLCM features of a normalised matrix ``p`` (grey levels counted from 1)."""
    n = p.shape[0]
    i, j = np.meshgrid(np.arange(1, n + 1), np.arange(1, n + 1), indexing="ij")
    mu_i, mu_j = (i * p).sum(), (j * p).sum()
    sd_i = np.sqrt(((i - mu_i) ** 2 * p).sum())
    sd_j = np.sqrt(((j - mu_j) ** 2 * p).sum())
    contrast = ((i - j) ** 2 * p).sum()
    dissimilarity = (np.abs(i - j) * p).sum()
    idm = (p / (1.0 + (i - j) ** 2)).sum()
    asm = (p**2).sum()
    corr = (((i - mu_i) * (j - mu_j) * p).sum() / (sd_i * sd_j)) if sd_i * sd_j > 0 else 1.0
    nz = p[p > 0]
    entropy = -(nz * np.log2(nz)).sum()
    s = i + j - mu_i - mu_j
    return np.array(
        [
            contrast,
            dissimilarity,
            idm,
            asm,
            corr,
            entropy,
            p.max(),
            (s**2 * p).sum(),
            (s**3 * p).sum(),
            (s**4 * p).sum(),
        ],
        np.float64,
    )


def _gabor_kernels(cfg: RadiomicsConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    kernels = []
    for lam in cfg.gabor_wavelengths:
        size = int(2 * round(lam) + 1)
        for k in range(cfg.gabor_orientations):
            theta = k * np.pi / cfg.gabor_orientations
            re = cv2.getGaborKernel((size, size), 0.56 * lam, theta, lam, 1.0, 0.0, cv2.CV_32F)
            im = cv2.getGaborKernel(
                (size, size), 0.56 * lam, theta, lam, 1.0, np.pi / 2, cv2.CV_32F
            )
            kernels.append((re - re.mean(), im))
    return kernels


_KERNELS: dict[RadiomicsConfig, list] = {}


def descriptor(patch: np.ndarray, cfg: RadiomicsConfig = RadiomicsConfig()) -> np.ndarray:
    """The 34-dim descriptor (float32) of one 2D patch in [-1, 1]."""
    x = np.asarray(patch, np.float32)
    q = quantise(x, cfg.levels)
    feats = [glcm_features(glcm(q, cfg.levels))]
    codes = local_binary_pattern(q, cfg.lbp_points, cfg.lbp_radius, method="uniform")
    hist = np.bincount(codes.astype(np.int64).ravel(), minlength=cfg.lbp_points + 2)
    feats.append(hist[: cfg.lbp_points + 2] / codes.size)
    if cfg not in _KERNELS:
        _KERNELS[cfg] = _gabor_kernels(cfg)
    gab = []
    for re, im in _KERNELS[cfg]:
        r = cv2.filter2D(x, cv2.CV_32F, re, borderType=cv2.BORDER_REFLECT)
        m = cv2.filter2D(x, cv2.CV_32F, im, borderType=cv2.BORDER_REFLECT)
        gab.append(float(np.sqrt(r * r + m * m).mean()))
    feats.append(np.array(gab))
    mean, std = float(x.mean()), float(x.std())
    z = (x - mean) / std if std > 1e-6 else np.zeros_like(x)
    p10, p90 = np.percentile(x, [10, 90])
    feats.append(np.array([mean, std, float((z**3).mean()), float((z**4).mean() - 3.0), p10, p90]))
    return np.concatenate(feats).astype(np.float32)


def descriptor_grid(
    image: np.ndarray, centres: np.ndarray, patch: int, cfg: RadiomicsConfig = RadiomicsConfig()
) -> np.ndarray:
    """Descriptors (N, 34) of the ``patch``-sized windows centred at ``centres`` (N, 2) rows,
    cols of a 2D image in [-1, 1] (reflect-padded at the border)."""
    half = patch // 2
    padded = np.pad(np.asarray(image, np.float32), half, mode="reflect")
    out = np.empty((len(centres), cfg.dim), np.float32)
    for n, (r, c) in enumerate(centres):
        out[n] = descriptor(padded[r : r + patch, c : c + patch], cfg)
    return out
