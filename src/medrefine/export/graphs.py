"""torch -> ONNX: the coarse model and the refiner's two halves as graphs, plus ``manifest.json``.

Graphs (float32; B is a dynamic axis, H x W the weights' preprocessing grid, fixed):

    coarse.onnx             image01 (B, C, H, W) -> probs (B, K, H, W), sigmoid/softmax applied
    refiner_condition.onnx  image01 (B, C, H, W), coarse (B, 1, H, W)
                            -> full (B, 4(C+1), H/2, W/2), f0..f3 (strides 2, 4, 8, 16)
    refiner_step.onnx       x_t (B, 1, H, W), t (B,) int64, full, f0..f3 (all batch B)
                            -> out (B, 1, H, W): the denoiser's x0 logits or epsilon

The split mirrors ``Denoiser.encode_condition`` (once per image) and ``Denoiser.forward`` (every
step). ``manifest.json`` (its format is ``manifest``'s) holds, per model, the medrefine info of
its weights file (configs, refinement defaults, preprocessing), the weights' SHA-256 and each
graph's SHA-256, so a folder describes itself and a runner can refuse graphs that no longer
match their weights. Each graph also carries ``medrefine`` metadata (part, graph, weights SHA-256).

The exporter is torch's ``torch.export``-based one (``dynamo=True``, needs onnxscript): the
TorchScript tracer (``dynamo=False``) cannot export ``ConditionEncoder``'s
``adaptive_avg_pool2d`` to a size taken from a tensor shape.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medrefine import __version__
from medrefine.checkpoint import file_sha256
from medrefine.errors import ConfigError
from medrefine.export.manifest import (
    COND_NAMES,
    FORMAT,
    FORMAT_VERSION,
    GRAPHS,
    atomic_path,
    write_manifest,
)

logger = logging.getLogger(__name__)

OPSET = 18
QUANTIZE_MODES = ("int8",)
MAX_BATCH = 4096


# ---------------------------------------------------------------- export wrappers
class CoarseProbs(nn.Module):
    """A segmentation model -> probabilities, as ``CoarseSegmenter.predict_grid`` computes."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image01: torch.Tensor) -> torch.Tensor:
        logits = self.model(image01)
        if isinstance(logits, list):
            logits = logits[0]
        logits = logits.float()
        return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


class RefinerCondition(nn.Module):
    """``Denoiser.encode_condition`` with the feature list flattened into outputs."""

    def __init__(self, denoiser: nn.Module):
        super().__init__()
        self.denoiser = denoiser

    def forward(self, image01: torch.Tensor, coarse: torch.Tensor) -> tuple[torch.Tensor, ...]:
        full, feats = self.denoiser.encode_condition(image01, coarse)
        return (full, *feats)


class RefinerStep(nn.Module):
    """``Denoiser.forward`` with the condition as separate inputs of the same batch as x_t."""

    def __init__(self, denoiser: nn.Module):
        super().__init__()
        self.denoiser = denoiser

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        full: torch.Tensor,
        f0: torch.Tensor,
        f1: torch.Tensor,
        f2: torch.Tensor,
        f3: torch.Tensor,
    ) -> torch.Tensor:
        return self.denoiser(x_t, t, (full, [f0, f1, f2, f3]))


# ---------------------------------------------------------------- export
def export_onnx(
    out_dir: str | Path,
    coarse_weights: str | Path | None = None,
    refiner_weights: str | Path | None = None,
    *,
    opset: int = OPSET,
    quantize: str | None = None,
    calibration: str | Path | None = None,
) -> dict[str, Any]:
    """Export the given weights' models into ``out_dir`` and write its manifest.

    Args:
        out_dir: folder for the graphs (created; files already there are replaced).
        coarse_weights / refiner_weights: medrefine ``.safetensors`` files; at least one.
        opset: ONNX opset of the graphs.
        quantize: ``"int8"`` adds statically quantised copies (``*.int8.onnx``).
        calibration: data folder (images/ + masks/) the int8 ranges are measured on;
            default: the shipped sample images (see ``quantize``).

    Returns:
        The manifest that was written to ``out_dir/manifest.json``.
    """
    if coarse_weights is None and refiner_weights is None:
        raise ConfigError("nothing to export: give coarse and/or refiner weights")
    if quantize is not None and quantize not in QUANTIZE_MODES:
        raise ConfigError(f"unknown quantisation {quantize!r}; choose from {QUANTIZE_MODES}")
    if not 17 <= int(opset) <= 23:
        raise ConfigError(
            f"opset {opset} is outside 17..23 (what torch's exporter and "
            f"onnxruntime agree on); the default is {OPSET}"
        )
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir}: is a file; give a folder for the ONNX graphs")
    out_dir.mkdir(parents=True, exist_ok=True)
    models: dict[str, Any] = {}
    if coarse_weights is not None:
        models["coarse"] = _export_coarse(Path(coarse_weights), out_dir, int(opset))
    if refiner_weights is not None:
        models["refiner"] = _export_refiner(Path(refiner_weights), out_dir, int(opset))
    import onnx

    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "medrefine_version": __version__,
        "torch_version": torch.__version__,
        "onnx_version": onnx.__version__,
        "exporter": "torch.onnx.export(dynamo=True)",
        "opset": int(opset),
        "quantize": [],
        "models": models,
    }
    write_manifest(out_dir, manifest)
    if quantize == "int8":
        from medrefine.export.quantize import add_int8

        manifest = add_int8(out_dir, calibration)
    return manifest


def _export_coarse(weights: Path, out_dir: Path, opset: int) -> dict[str, Any]:
    from medrefine.inference import CoarseSegmenter

    seg = CoarseSegmenter.from_weights(weights, "cpu")
    sha = file_sha256(weights)
    h, w = seg.pre_cfg.size
    image01 = torch.rand(
        (2, seg.model_cfg.in_channels, h, w), generator=torch.Generator().manual_seed(0)
    )
    meta = {"part": "coarse", "weights_sha256": sha}
    graph = export_graph(
        CoarseProbs(seg.model),
        (image01,),
        ["image01"],
        ["probs"],
        out_dir / GRAPHS["coarse"]["coarse"],
        opset,
        {**meta, "graph": "coarse"},
    )
    return {
        "weights": {"name": weights.name, "sha256": sha},
        "info": seg.info,
        "graphs": {"coarse": graph},
    }


def _export_refiner(weights: Path, out_dir: Path, opset: int) -> dict[str, Any]:
    from medrefine.refine import Refiner

    refiner = Refiner.from_weights(weights, "cpu")
    denoiser, sha = refiner.model, file_sha256(weights)
    h, w = refiner.pre_cfg.size
    gen = torch.Generator().manual_seed(0)
    image01 = torch.rand((2, denoiser.cfg.image_channels, h, w), generator=gen)
    coarse = torch.rand((2, 1, h, w), generator=gen)
    meta = {"part": "refiner", "weights_sha256": sha}
    files = GRAPHS["refiner"]
    condition = export_graph(
        RefinerCondition(denoiser),
        (image01, coarse),
        ["image01", "coarse"],
        list(COND_NAMES),
        out_dir / files["condition"],
        opset,
        {**meta, "graph": "condition"},
    )
    with torch.no_grad():
        full, feats = denoiser.encode_condition(image01, coarse)
    x_t = torch.randn((2, 1, h, w), generator=gen)
    t = torch.tensor([10, 500], dtype=torch.long)
    step = export_graph(
        RefinerStep(denoiser),
        (x_t, t, full, *feats),
        ["x_t", "t", *COND_NAMES],
        ["out"],
        out_dir / files["step"],
        opset,
        {**meta, "graph": "step"},
    )
    return {
        "weights": {"name": weights.name, "sha256": sha},
        "info": refiner.info,
        "graphs": {"condition": condition, "step": step},
    }


def export_graph(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    input_names: list[str],
    output_names: list[str],
    path: Path,
    opset: int,
    meta: dict[str, Any],
) -> dict[str, Any]:
    """One graph with a dynamic batch axis on every input, written atomically to ``path``."""
    import onnx

    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                module.eval(),
                args,
                None,
                dynamo=True,
                input_names=input_names,
                output_names=output_names,
                dynamic_shapes={n: {0: batch} for n in input_names},
                opset_version=opset,
                external_data=False,
                verbose=False,
            )
    except Exception as err:  # the exporter raises many types; all mean "cannot export"
        raise ConfigError(
            f"cannot export the {meta['part']} {meta['graph']} graph to ONNX "
            f"opset {opset} ({type(err).__name__}: {err}); try the default "
            f"--opset {OPSET}"
        ) from err
    proto = program.model_proto
    onnx.helper.set_model_props(
        proto, {"medrefine": json.dumps({**meta, "medrefine_version": __version__})}
    )
    with atomic_path(path) as tmp:
        onnx.save_model(proto, str(tmp))
    logger.info("wrote %s", path)
    return {
        "file": path.name,
        "sha256": file_sha256(path),
        "inputs": _shapes(proto.graph.input),
        "outputs": _shapes(proto.graph.output),
    }


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter warns about deprecations, missing torchvision ops and opset conversion
    fallbacks that do not concern these models; keep that out of the user's terminal."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _shapes(values) -> dict[str, list[int | str]]:
    return {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values
    }
