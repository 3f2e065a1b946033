"""The segmentation core shared by the pipeline and the ablation script: cluster the lung
locations of prepared slices, fuse with Sobel edges, name the clusters.

    x (S, H, W) in [-1, 1], lung (S, H, W) -featurize-> (S, F, h, w) at stride H / h
    -lung cells-> (N, F) -cluster-> (N, K) -nearest lung cell, bilinear-> (S, K, H, W)
    -Sobel fusion-> cluster map (S, H, W) -naming-> label map (S, H, W)

2D models featurize ``batch`` slices at a time; 3D models (``z_halo`` given) featurize
z-chunks of ``batch`` consecutive slices with ``z_halo`` context slices either side
(``features.z_chunks``); everything after the per-slice maps is the same.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage as ndi

from medrefine.lungpath.cluster import ClusterConfig, cluster_posteriors
from medrefine.lungpath.features import Featurize3D, z_chunks
from medrefine.lungpath.fusion import FusionConfig, fuse
from medrefine.lungpath.naming import (
    NamingConfig,
    local_stats,
    lung_ranks,
    name_clusters,
)

Featurize = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (B,H,W), lung -> (B,F,h,w)


@dataclass
class Clustering:
    clusters: np.ndarray  # (S, H, W) uint8 cluster index (255 outside the lung)
    posteriors_cells: np.ndarray  # (N, K)
    n_cells: int


def cluster_slices(
    x: np.ndarray,
    lung: np.ndarray,
    featurize: Featurize | Featurize3D,
    ccfg: ClusterConfig,
    fcfg: FusionConfig,
    batch: int = 4,
    z_halo: int | None = None,
) -> Clustering:
    """Cluster map (S, H, W) of prepared slices (see module docstring). ``z_halo`` None:
    ``featurize(x, lung)`` on batches of slices (2D); an int: ``featurize(x, lung, z0)`` on
    z-chunks of consecutive slices with that many context slices either side (3D)."""
    if z_halo is None:
        chunks = (
            (start, featurize(x[start : start + batch], lung[start : start + batch]))
            for start in range(0, len(x), batch)
        )
    else:
        chunks = z_chunks(featurize, x, lung, batch, z_halo)
    feats, cells, grids = [], [], []
    for start, fmap in chunks:  # fmap (B, F, h, w) for slices start .. start + B - 1
        for b in range(len(fmap)):
            s = start + b
            h, w = fmap.shape[-2:]
            share = cv2.resize(lung[s].astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
            cell = share >= 0.5
            if lung[s].any() and not cell.any():
                cell = share >= share.max()
            cells.append(cell)
            grids.append((h, w))
            feats.append(fmap[b][:, cell].T)  # (n_s, F)
    allf = np.concatenate(feats)
    post = cluster_posteriors(allf, ccfg)  # (N, K)
    k = post.shape[1]
    clusters = np.full(x.shape, 255, np.uint8)
    offset = 0
    for s in range(len(x)):
        cell, (h, w) = cells[s], grids[s]
        n = int(cell.sum())
        if n == 0:
            continue
        grid = np.zeros((k, h, w), np.float32)
        grid[:, cell] = post[offset : offset + n].T
        offset += n
        if not cell.all():  # cells outside the lung take their nearest lung cell's values
            _, (iy, ix) = ndi.distance_transform_edt(~cell, return_indices=True)
            grid = grid[:, iy, ix]
        H, W = x.shape[1:]
        up = np.stack([cv2.resize(g, (W, H), interpolation=cv2.INTER_LINEAR) for g in grid])
        fused = fuse(up, x[s], lung[s], fcfg)
        clusters[s][lung[s]] = fused.argmax(axis=0)[lung[s]]
    return Clustering(clusters, post, len(allf))


def cluster_stats(
    clusters: np.ndarray,
    value: np.ndarray,
    lung: np.ndarray,
    k: int,
    window: int,
    laa_below: float | None,
    max_values: int = 200_000,
    seed: int = 0,
) -> np.ndarray:
    """(K, 3) medians of the local mean, spread and LAA share of ``value`` per cluster."""
    ms, ss, aa, cs = [], [], [], []
    for s in range(len(value)):
        if not lung[s].any():
            continue
        m, sd, a = local_stats(value[s], lung[s], window, laa_below)
        sel = lung[s]
        ms.append(m[sel])
        ss.append(sd[sel])
        aa.append(a[sel])
        cs.append(clusters[s][sel])
    m, sd, a, c = (np.concatenate(v) for v in (ms, ss, aa, cs))
    if len(c) > max_values:
        pick = np.random.default_rng(seed).choice(len(c), max_values, replace=False)
        m, sd, a, c = m[pick], sd[pick], a[pick], c[pick]
    out = np.full((k, 3), np.nan)
    for j in range(k):
        sel = c == j
        if sel.any():
            out[j] = [np.median(m[sel]), np.median(sd[sel]), np.median(a[sel])]
    return out


def rank_values(value: np.ndarray, lung: np.ndarray) -> np.ndarray:
    """Per-slice intensity ranks inside the lung (rank mode)."""
    return np.stack([lung_ranks(value[s], lung[s]) for s in range(len(value))])


def name_map(
    clusters: np.ndarray,
    value: np.ndarray,
    lung: np.ndarray,
    k: int,
    mode: str,
    ncfg: NamingConfig,
    window: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(label map (S, H, W) uint8, cluster labels (K,), cluster stats (K, 3)).

    ``value``: HU (hu mode) or the 8-bit intensity (rank mode; ranked per slice here)."""
    if mode == "rank":
        value = rank_values(value, lung)
    stats = cluster_stats(clusters, value, lung, k, window, ncfg.laa_hu if mode == "hu" else None)
    names = name_clusters(stats, mode, ncfg)
    lut = np.zeros(256, np.uint8)
    lut[:k] = names
    labels = np.where(lung, lut[clusters], 0).astype(np.uint8)
    return labels, names, stats
