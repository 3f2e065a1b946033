"""LungPathologyPipeline: unsupervised lung pathology on CT (DiffSegLung).

LoadedImage (HU, or 8-bit in rank mode)
 -> lung mask (``lungmask``) -> no lung: InputError; part of the lungs only (under 1 L, or
    cut off by the scan range): ``coverage["partial"]``, reported with every output
 -> normalised (``hu``), in-plane resampled to ``features.grid_mm`` (HU volumes), cropped
    to the lung's box and padded to the net's stride
 -> multi-timestep bottleneck features (``features``) -> GMM K=5 (``cluster``)
 -> Sobel fusion (``fusion``) -> cluster map -> HU-guided names (``naming``)
 -> label map on the input's grid (0 outside lung, 1 healthy, 2 emphysema, 3 ground-glass,
    4 consolidation, 5 fibrosis) + per-class voxels, mL and fraction of lung.

A 3D model (weights trained with ``net.dims`` 3) featurises the contiguous run of slices
from the first to the last lung slice as one z-stack, in z-chunks with a halo
(``features.z_chunks``; z is not resampled); a single 2D slice is a stack of one slice,
replicate-padded in z. Clustering, naming and fusion are the same as for 2D models.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from medrefine.checkpoint import file_sha256
from medrefine.config import build_dataclass, load_config_file
from medrefine.errors import ConfigError, InputError
from medrefine.io import LoadedImage, read_image
from medrefine.lungpath.cluster import ClusterConfig
from medrefine.lungpath.features import (
    FeatureConfig,
    bottleneck_features,
    bottleneck_features_3d,
    halo_of,
)
from medrefine.lungpath.fusion import FusionConfig
from medrefine.lungpath.hu import check_8bit, check_hu, normalise_8bit, normalise_hu
from medrefine.lungpath.labels import CLASS_NAMES, LABELS
from medrefine.lungpath.lungmask import (
    MaskConfig,
    check_has_lung,
    hu_lung_mask,
    intensity_lung_mask,
    lung_coverage,
)
from medrefine.lungpath.naming import NamingConfig, emphysema_pixels
from medrefine.lungpath.segment import Featurize, cluster_slices, name_map

MODES = ("hu", "rank")
MODEL_SECTIONS = ("stage", "net", "diffusion", "radiomics", "train")  # training only


@dataclass(frozen=True)
class InferenceConfig:
    intensity: str = "hu"
    threads: int = 1
    mask: MaskConfig = field(default_factory=MaskConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    naming: NamingConfig = field(default_factory=NamingConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)

    def __post_init__(self):
        if self.intensity not in MODES:
            raise ConfigError(f"intensity must be one of {MODES}, got {self.intensity!r}")


def load_inference_config(path: str | Path | None, **overrides: Any) -> InferenceConfig:
    """The inference sections of a lungpath YAML (training sections are skipped; any other
    unknown key is an error), then ``overrides`` (top-level keys) that are not None."""
    data = {}
    if path is not None:
        data = {k: v for k, v in load_config_file(path).items() if k not in MODEL_SECTIONS}
    data.update({k: v for k, v in overrides.items() if v is not None})
    return build_dataclass(InferenceConfig, data, str(path or "lungpath config"))


@dataclass
class LungPathologyResult:
    """labels: uint8 on the input's grid ((H, W) or (D, H, W)); lung: bool, same shape;
    classes: per class name voxels, ml (None without spacing) and fraction_of_lung;
    clusters: the GMM cluster of each pixel and cluster_labels/cluster_stats their names and
    the statistics the names were decided on (for the ablation's oracle matching)."""

    image: LoadedImage
    labels: np.ndarray
    lung: np.ndarray
    classes: dict[str, dict[str, Any]]
    lung_ml: float | None
    clusters: np.ndarray  # uint8 cluster index per pixel (255 outside the lung)
    cluster_labels: list[int]
    cluster_stats: list[list[float]]
    timings: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    # how much of the lungs the input shows (lungmask.lung_coverage): partial, reasons
    coverage: dict[str, Any] = field(default_factory=dict)

    @property
    def partial_coverage(self) -> bool:
        return bool(self.coverage.get("partial"))

    @property
    def mask(self) -> np.ndarray:  # the name batch writers use
        return self.labels


def class_table(labels: np.ndarray, spacing) -> tuple[dict[str, dict[str, Any]], float | None]:
    counts = np.bincount(labels.ravel(), minlength=6)
    n_lung = int(counts[1:].sum())
    cell = math.prod(spacing) / 1000.0 if spacing is not None else None
    table = {}
    for name in CLASS_NAMES:
        n = int(counts[LABELS[name]])
        table[name] = {
            "voxels": n,
            "ml": n * cell if cell is not None else None,
            "fraction_of_lung": n / n_lung if n_lung else 0.0,
        }
    return table, (n_lung * cell if cell is not None else None)


class LungPathologyPipeline:
    """``LungPathologyPipeline().run("ct.nii.gz")``.

    Args:
        weights: a weights file from ``medrefine train --stage lungpath`` (default: the shipped
            distilled model).
        config: an ``InferenceConfig`` or a YAML path (its inference sections).
        intensity: ``hu`` (CT in Hounsfield units) or ``rank`` (8-bit slices); overrides the
            config.
        featurize: 2D models only: ``featurize(x, lung)`` ((B, H, W) slices in [-1, 1] and
            their lung masks -> (B, F, h, w) feature maps) in place of the model's bottleneck
            features, e.g. the ablation's radiomic descriptors; everything else is the same.
    """

    def __init__(
        self,
        weights: str | Path | None = None,
        config: InferenceConfig | str | Path | None = None,
        intensity: str | None = None,
        featurize: Featurize | None = None,
    ):
        from medrefine.lungpath.model import load_model, shipped_weights, torch_threads

        cfg = config if isinstance(config, InferenceConfig) else load_inference_config(config)
        if intensity is not None:
            cfg = InferenceConfig(
                **{**{f: getattr(cfg, f) for f in cfg.__dataclass_fields__}, "intensity": intensity}
            )
        self.cfg = cfg
        torch_threads(cfg.threads)
        self.weights = Path(weights) if weights is not None else shipped_weights()
        self.model, self.schedule, self.info = load_model(self.weights)
        if max(cfg.features.timesteps) >= self.schedule.num_timesteps:
            raise ConfigError(
                f"features.timesteps {cfg.features.timesteps} must be below the "
                f"model's {self.schedule.num_timesteps} diffusion steps"
            )
        if featurize is not None and self.model.cfg.dims != 2:
            raise ConfigError(
                f"{self.weights}: a {self.model.cfg.dims}D model featurises z-stacks; a "
                "replacement featurize is for 2D models only"
            )
        self._featurize = featurize
        self._sha = None

    # ------------------------------------------------------------ the steps
    def featurize(self, x: np.ndarray, lung: np.ndarray) -> np.ndarray:
        if self._featurize is not None:
            return self._featurize(x, lung)
        return bottleneck_features(self.model, self.schedule, x, self.cfg.features)

    def featurize_3d(self, x: np.ndarray, lung: np.ndarray, z0: int) -> np.ndarray:
        """3D models: maps (D, F, h, w) of a z-chunk (with its halo) starting at z0."""
        return bottleneck_features_3d(self.model, self.schedule, x, self.cfg.features, z0)

    def run(
        self, image: LoadedImage | str | Path, lung_mask: np.ndarray | None = None
    ) -> LungPathologyResult:
        """Segment one CT (volume or slice). ``lung_mask``: a provided lung mask on the
        input's grid (used as is; otherwise the HU or intensity mask)."""
        t0 = time.perf_counter()
        if not isinstance(image, LoadedImage):
            image = read_image(image)
        name = str(image.path) if image.path is not None else "image"
        cfg = self.cfg
        timings: dict[str, float] = {}
        if cfg.intensity == "hu":
            value = check_hu(image)
            lung = hu_lung_mask(value, image.spacing, cfg.mask) if lung_mask is None else None
            x_full = normalise_hu(value)
        else:
            value = check_8bit(image)
            lung = None
            if lung_mask is None:
                lung = (
                    np.stack([intensity_lung_mask(v) for v in value])
                    if value.ndim == 3
                    else intensity_lung_mask(value)
                )
            x_full = normalise_8bit(value)
        if lung_mask is not None:
            lung = np.asarray(lung_mask).reshape(value.shape) > 0
        check_has_lung(lung, image.spacing, cfg.mask, name)
        coverage = lung_coverage(lung, image.spacing, cfg.mask)
        timings["lung_mask"] = time.perf_counter() - t0
        volume = value.ndim == 3
        v3, x3, l3 = (a if volume else a[None] for a in (value, x_full, lung))
        # in-plane working grid
        scale = 1.0
        if cfg.intensity == "hu" and image.spacing is not None:
            scale = float(image.spacing[-1]) / cfg.features.grid_mm
        keep = np.nonzero(l3.any(axis=(1, 2)))[0]
        dims = self.model.cfg.dims
        if dims == 3:  # a z-stack needs its neighbours: first to last lung slice, no gaps
            keep = np.arange(keep.min(), keep.max() + 1)
        ys, xs = np.nonzero(l3[keep].any(axis=0))
        stride = self.model.cfg.stride
        margin = 8
        y0, y1 = max(0, ys.min() - margin), min(l3.shape[1], ys.max() + margin + 1)
        x0, x1 = max(0, xs.min() - margin), min(l3.shape[2], xs.max() + margin + 1)
        h = max(stride, int(math.ceil((y1 - y0) * scale / stride)) * stride)
        w = max(stride, int(math.ceil((x1 - x0) * scale / stride)) * stride)

        def to_grid(a, interp):
            return np.stack(
                [
                    cv2.resize(s, (w, h), interpolation=interp)
                    for s in a[keep, y0:y1, x0:x1].astype(np.float32)
                ]
            )

        xg = to_grid(x3, cv2.INTER_AREA)
        vg = to_grid(v3, cv2.INTER_AREA)
        lg = to_grid(l3, cv2.INTER_AREA) >= 0.5
        t1 = time.perf_counter()
        if dims == 3:
            halo = halo_of(self.model, cfg.features)
            clustering = cluster_slices(
                xg, lg, self.featurize_3d, cfg.cluster, cfg.fusion, cfg.features.z_chunk, halo
            )
        else:
            clustering = cluster_slices(
                xg, lg, self.featurize, cfg.cluster, cfg.fusion, cfg.features.slice_batch
            )
        timings["features_cluster_fusion"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        pixel_mm = (float(image.spacing[-1]) / scale) if image.spacing is not None else 1.0
        window = (
            max(1, round(cfg.naming.window_mm / pixel_mm))
            if cfg.intensity == "hu"
            else cfg.naming.window_px
        )
        labels_g, names, stats = name_map(
            clustering.clusters, vg, lg, cfg.cluster.k, cfg.intensity, cfg.naming, window
        )
        # back to the input's grid: nearest, then the input's own lung mask decides the extent
        labels3 = np.zeros(l3.shape, np.uint8)
        clusters3 = np.full(l3.shape, 255, np.uint8)
        for i, d in enumerate(keep):
            size = (x1 - x0, y1 - y0)
            labels3[d, y0:y1, x0:x1] = cv2.resize(
                labels_g[i], size, interpolation=cv2.INTER_NEAREST
            )
            clusters3[d, y0:y1, x0:x1] = cv2.resize(
                clustering.clusters[i], size, interpolation=cv2.INTER_NEAREST
            )
        labels3 = np.where(l3, np.maximum(labels3, LABELS["healthy"]), 0).astype(np.uint8)
        if cfg.intensity == "hu":  # emphysema pixel by pixel, on the input's own voxels
            labels3[emphysema_pixels(labels3, v3, cfg.naming)] = LABELS["emphysema"]
        labels = labels3 if volume else labels3[0]
        timings["naming"] = time.perf_counter() - t2
        classes, lung_ml = class_table(labels, image.spacing)
        timings["total"] = time.perf_counter() - t0
        return LungPathologyResult(
            image=image,
            labels=labels,
            lung=lung,
            classes=classes,
            lung_ml=lung_ml,
            clusters=clusters3 if volume else clusters3[0],
            cluster_labels=[int(v) for v in names],
            cluster_stats=stats.tolist(),
            timings=timings,
            params={
                "intensity": cfg.intensity,
                "grid": [len(keep), h, w],
                "lung_cells": clustering.n_cells,
                **({"net_dims": 3, "z_halo": halo} if dims == 3 else {}),
            },
            coverage=coverage,
        )

    def provenance(self) -> dict[str, Any]:
        if self._sha is None:
            self._sha = file_sha256(self.weights)
        return {
            "weights": {"lungpath": {"path": str(self.weights), "sha256": self._sha}},
            "config": asdict(self.cfg),
        }


def check_lung_mask_shape(mask: np.ndarray, image: LoadedImage, name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim == len(image.spatial_shape) + 1 and mask.shape[0] == 1:
        mask = mask[0]
    if mask.shape != tuple(image.spatial_shape):
        raise InputError(
            f"{name}: lung mask is {mask.shape} but the image is "
            f"{image.spatial_shape}; give a lung mask of the image's size"
        )
    return mask > 0
