"""ONNX Runtime runners with the interfaces the pipeline already uses.

* ``OnnxCoarseSegmenter`` is a ``CoarseSegmenter`` whose network (``_probs``) is ``coarse.onnx``.
* ``OnnxDenoiser`` stands in for ``Denoiser`` inside an ordinary ``Refiner``:
  ``encode_condition(image01, coarse)`` runs ``refiner_condition.onnx`` once per image and
  ``__call__(x_t, t, cond)`` runs ``refiner_step.onnx`` at every step, both returning torch
  tensors, so ``Refiner.refine_grid`` (noise, scheduler, fusion) is the same code for both
  backends and a seed gives the same noise.

Sessions run on the CPU with as many intra-op threads as torch uses. Where the graphs come
from (an export folder, or the per-user cache filled on first use) is ``loading``'s business.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from medrefine.errors import ConfigError, InputError
from medrefine.export.manifest import COND_NAMES
from medrefine.inference import CoarseSegmenter
from medrefine.models.denoiser import DenoiserConfig


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

    @classmethod
    def from_graphs(cls, files: dict[str, Path], info: dict) -> OnnxDenoiser:
        """Over the ``condition`` and ``step`` graph files, with the config in ``info``."""
        return cls(
            OnnxGraph(files["condition"], ("image01", "coarse")),
            OnnxGraph(files["step"], ("x_t", "t", *COND_NAMES)),
            DenoiserConfig.from_dict(info["denoiser"]),
        )

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
