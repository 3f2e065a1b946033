"""The ONNX backend's models: runners over the graphs of an export folder or of the per-user
cache, which is filled on first use.

Graphs come from a folder written by ``medrefine export`` (checked against the weights by
SHA-256), or, with no folder given, from
``$XDG_CACHE_HOME/medrefine/onnx/<sha256 of the weights>/`` (``~/.cache`` without it),
exported (``graphs``) and, for int8, quantised (``quantize``) there on first use. The top of
the export package: it uses the others, none of them uses it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
from pathlib import Path

from medrefine.checkpoint import file_sha256, read_info
from medrefine.diffusion import DiffusionConfig
from medrefine.errors import ConfigError, InputError
from medrefine.export.graphs import export_onnx
from medrefine.export.manifest import graph_files, read_manifest
from medrefine.export.runtime import OnnxCoarseSegmenter, OnnxDenoiser, OnnxGraph, check_cpu
from medrefine.inference import preprocess_config_from
from medrefine.models.registry import SegModelConfig
from medrefine.refine import Refiner

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx")


# ---------------------------------------------------------------- loading
def onnx_coarse(
    weights: str | Path,
    onnx_dir: str | Path | None = None,
    *,
    quantized: bool = False,
    device: str = "auto",
) -> OnnxCoarseSegmenter:
    """The coarse model of ``weights`` on ONNX Runtime (graphs from ``onnx_dir`` or the cache)."""
    info, files = _checked_graphs(
        weights, onnx_dir, quantized, device, "coarse", "a coarse segmentation model"
    )
    graph = OnnxGraph(files["coarse"], ("image01",))
    model_cfg = SegModelConfig.from_dict(info["model"])
    preprocess = preprocess_config_from(info["preprocess"])
    return OnnxCoarseSegmenter(graph, model_cfg, preprocess, "cpu", info)


def onnx_refiner(
    weights: str | Path,
    onnx_dir: str | Path | None = None,
    *,
    quantized: bool = False,
    device: str = "auto",
) -> Refiner:
    """A ``Refiner`` whose denoiser runs on ONNX Runtime."""
    info, files = _checked_graphs(
        weights, onnx_dir, quantized, device, "refiner", "a diffusion refiner"
    )
    denoiser = OnnxDenoiser.from_graphs(files, info)
    diffusion_cfg = DiffusionConfig.from_dict(info["diffusion"])
    preprocess = preprocess_config_from(info["preprocess"])
    return Refiner(denoiser, diffusion_cfg, preprocess, "cpu", info)


def _checked_graphs(
    weights: str | Path,
    onnx_dir: str | Path | None,
    quantized: bool,
    device: str,
    kind: str,
    what: str,
) -> tuple[dict, dict[str, Path]]:
    """``weights``' info and its graph files (from ``onnx_dir`` or the cache), once the device
    is the CPU and ``weights`` holds a ``kind`` model (``what`` names that kind in the error)."""
    check_cpu(device)
    weights = Path(weights)
    info = read_info(weights)
    if info.get("kind") != kind:
        raise InputError(f"{weights}: holds a {info.get('kind')!r} model, not {what}")
    folder = Path(onnx_dir) if onnx_dir is not None else cached_onnx_dir(weights, quantized)
    return info, graph_files(folder, kind, weights, quantized)


# ---------------------------------------------------------------- cache
def cache_root() -> Path:
    """``$XDG_CACHE_HOME/medrefine/onnx`` (``~/.cache/medrefine/onnx`` without it)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "medrefine" / "onnx"


def cached_onnx_dir(weights: str | Path, quantized: bool = False) -> Path:
    """The cache folder of ``weights``' graphs, exported (and quantised) on first use."""
    weights = Path(weights)
    part = {"coarse": "coarse", "refiner": "refiner"}.get(read_info(weights).get("kind"))
    if part is None:
        raise InputError(f"{weights}: not a coarse model or refiner; nothing to export")
    root = cache_root()
    folder = root / file_sha256(weights)
    if not _holds(folder, part, weights):
        logger.info("exporting %s to ONNX in %s (first use; later runs reuse it)", weights, folder)
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(
                f"{root}: cannot create the ONNX cache ({err}); pass an ONNX "
                "folder made with `medrefine export` instead"
            ) from err
        tmp = root / f".{folder.name}.{secrets.token_hex(6)}.tmp"
        try:
            export_onnx(tmp, **{f"{part}_weights": weights})
            if folder.exists():  # an unusable earlier export (damaged, interrupted)
                shutil.rmtree(folder, ignore_errors=True)
            with contextlib.suppress(OSError):  # a concurrent run may have won the race
                os.rename(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if quantized and not read_manifest(folder)["models"][part].get("int8"):
        from medrefine.export.quantize import add_int8

        logger.info("quantising the ONNX graphs in %s to int8 (first use)", folder)
        add_int8(folder)
    return folder


def _holds(folder: Path, part: str, weights: Path) -> bool:
    """Whether ``folder`` has intact float32 graphs of ``weights``."""
    try:
        graph_files(folder, part, weights)
    except InputError:
        return False
    return True
