"""ONNX Runtime runners with the interfaces the pipeline already uses.

* ``OnnxCoarseSegmenter`` is a ``CoarseSegmenter`` whose network (``_probs``) is ``coarse.onnx``.
* ``OnnxDenoiser`` stands in for ``Denoiser`` inside an ordinary ``Refiner``:
  ``encode_condition(image01, coarse)`` runs ``refiner_condition.onnx`` once per image and
  ``__call__(x_t, t, cond)`` runs ``refiner_step.onnx`` at every step, both returning torch
  tensors, so ``Refiner.refine_grid`` (noise, scheduler, fusion) is the same code for both
  backends and a seed gives the same noise.

Graphs come from a folder written by ``medrefine export`` (checked against the weights by
SHA-256), or, with no folder given, from a per-user cache that is filled on first use:
``$XDG_CACHE_HOME/medrefine/onnx/<sha256 of the weights>/`` (``~/.cache`` without it).
Sessions run on the CPU with as many intra-op threads as torch uses.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
from pathlib import Path

import numpy as np
import torch

from medrefine.checkpoint import file_sha256, read_info
from medrefine.diffusion import DiffusionConfig
from medrefine.errors import ConfigError, InputError
from medrefine.export.graphs import COND_NAMES, export_onnx, graph_files, read_manifest
from medrefine.inference import CoarseSegmenter, preprocess_config_from
from medrefine.models.denoiser import DenoiserConfig
from medrefine.models.registry import SegModelConfig
from medrefine.refine import Refiner

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx")


class _OnCpu:
    """The two ``nn.Module`` calls that ``CoarseSegmenter``/``Refiner`` make on a model."""

    def to(self, device: torch.device | str) -> _OnCpu:
        check_cpu(device)
        return self

    def eval(self) -> _OnCpu:
        return self


class OnnxGraph(_OnCpu):
    """One ONNX Runtime CPU session; ``__call__(**arrays)`` -> list of output arrays."""

    def __init__(
        self, path: str | Path, expected_inputs: tuple[str, ...], threads: int | None = None
    ):
        import onnxruntime as ort

        self.path = Path(path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # errors only; ORT's warnings go to stderr otherwise
        try:
            self.session = ort.InferenceSession(
                str(self.path), opts, providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise InputError(
                f"{self.path}: ONNX Runtime cannot load this graph ({err}); re-run medrefine export"
            ) from err
        names = tuple(i.name for i in self.session.get_inputs())
        if names != expected_inputs:
            raise InputError(
                f"{self.path}: graph inputs are {list(names)}, expected "
                f"{list(expected_inputs)}; re-run medrefine export"
            )

    def __call__(self, **arrays: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, arrays)


class OnnxCoarseSegmenter(CoarseSegmenter):
    """``CoarseSegmenter`` over ``coarse.onnx`` (which applies sigmoid/softmax itself)."""

    def _probs(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) on the grid -> probabilities (B, K, H, W) float32 tensor."""
        (probs,) = self.model(image01=_array(x))
        return torch.from_numpy(probs)


class OnnxDenoiser(_OnCpu):
    """The refiner's denoiser as two ONNX graphs (see the module docstring)."""

    def __init__(self, condition: OnnxGraph, step: OnnxGraph, cfg: DenoiserConfig):
        self.condition = condition
        self.step = step
        self.cfg = cfg

    def encode_condition(
        self, image01: torch.Tensor, coarse: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """image01 (B, C, H, W), coarse (B, 1, H, W) -> (full, [f0, f1, f2, f3])."""
        full, *feats = self.condition(image01=_array(image01), coarse=_array(coarse))
        return torch.from_numpy(full), [torch.from_numpy(f) for f in feats]

    def __call__(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: tuple[torch.Tensor, list[torch.Tensor]]
    ) -> torch.Tensor:
        """x_t (B, 1, H, W), t (B,) ints, cond of batch B or 1 -> output (B, 1, H, W)."""
        (out,) = self.step(**self.step_inputs(x_t, t, cond))
        return torch.from_numpy(out)

    @staticmethod
    def step_inputs(
        x_t: torch.Tensor, t: torch.Tensor, cond: tuple[torch.Tensor, list[torch.Tensor]]
    ) -> dict[str, np.ndarray]:
        """The step graph's inputs, the condition repeated to x_t's batch."""
        full, feats = cond
        b = x_t.shape[0]
        arrays = {"x_t": _array(x_t), "t": _array(t, np.int64)}
        for name, value in zip(COND_NAMES, (full, *feats), strict=True):
            if value.shape[0] != b:  # one image, several samples: the graph wants batch B
                value = value.expand(b, *value.shape[1:])
            arrays[name] = _array(value)
        return arrays


def _array(value: np.ndarray | torch.Tensor, dtype: type = np.float32) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.ascontiguousarray(value, dtype=dtype)


def check_cpu(device: torch.device | str) -> None:
    if str(device) not in ("auto", "cpu"):
        raise ConfigError(
            f"the onnx backend runs on the CPU (onnxruntime's CPU build), not "
            f"{device!r}; use device cpu, or backend torch for the GPU"
        )


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
    denoiser = OnnxDenoiser(
        OnnxGraph(files["condition"], ("image01", "coarse")),
        OnnxGraph(files["step"], ("x_t", "t", *COND_NAMES)),
        DenoiserConfig.from_dict(info["denoiser"]),
    )
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
