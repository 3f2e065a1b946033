"""Clustering lung locations: a Gaussian mixture with K = 5 (DiffSegLung) or K-means (the
ablation's radiomics baseline), on standardised features reduced by PCA."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from medrefine.errors import ConfigError, InputError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterConfig:
    method: str = "gmm"  # gmm | kmeans
    k: int = 5
    pca_dims: int = 16
    covariance: str = "full"
    max_fit_points: int = 20000
    seed: int = 0

    def __post_init__(self):
        if self.method not in ("gmm", "kmeans"):
            raise ConfigError(f"cluster.method must be gmm or kmeans, got {self.method!r}")
        if self.k < 2 or self.pca_dims < 1 or self.max_fit_points < 100:
            raise ConfigError("cluster: k >= 2, pca_dims >= 1, max_fit_points >= 100")
        if self.covariance not in ("full", "diag", "tied", "spherical"):
            raise ConfigError(f"cluster.covariance {self.covariance!r} is not a GMM type")


def cluster_posteriors(features: np.ndarray, cfg: ClusterConfig = ClusterConfig()) -> np.ndarray:
    """Soft assignments (N, K) of N feature vectors (N, F).

    Fitted on at most ``max_fit_points`` locations drawn with ``seed``, applied to all.
    K-means gives hard (one-hot) assignments."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture

    n = len(features)
    if n == 0:
        raise InputError("no lung locations to cluster; the lung is too small for lung-pathology")
    k = min(cfg.k, n // 4)  # a sliver of lung (a scan's last slices): fewer clusters
    if k < cfg.k:
        logger.warning("only %d lung locations: %d clusters instead of %d", n, max(k, 1), cfg.k)
    if k <= 1:
        return np.ones((n, 1), np.float32)
    x = np.asarray(features, np.float64)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    rng = np.random.default_rng(cfg.seed)
    fit = rng.choice(n, cfg.max_fit_points, replace=False) if n > cfg.max_fit_points else None
    dims = min(cfg.pca_dims, x.shape[1], n - 1)
    pca = PCA(dims, random_state=cfg.seed).fit(x if fit is None else x[fit])
    z = pca.transform(x)
    zf = z if fit is None else z[fit]
    if cfg.method == "kmeans":
        km = KMeans(k, n_init=4, random_state=cfg.seed).fit(zf)
        return np.eye(k, dtype=np.float32)[km.predict(z)]
    gmm = GaussianMixture(
        k,
        covariance_type=cfg.covariance,
        random_state=cfg.seed,
        reg_covar=1e-4,
        max_iter=200,
        init_params="k-means++",
    ).fit(zf)
    return gmm.predict_proba(z).astype(np.float32)
