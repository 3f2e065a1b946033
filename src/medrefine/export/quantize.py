"""int8 graphs: static quantisation calibrated on real images (ONNX Runtime, QDQ format).

Weights become int8 per output channel, activations uint8 with ranges (min/max) recorded while
the float32 graphs run on calibration cases; ONNX Runtime then runs the convolutions as
integer kernels (u8s8, VNNI where the CPU has it). Dynamic quantisation (weights only,
activation ranges per call) was tried first and is not offered: on these convolutional
models it made ONNX Runtime slower than float32 and moved coarse probabilities by up to 0.87.

Calibration cases are image/mask pairs: by default the shipped sample images of every preset
(with their masks), or the training split of a data folder (``images/`` + ``masks/``). The
coarse graph sees each image and its mirror image; the refiner's condition graph sees each
image with its mask (blurred, standing in for a coarse probability map); the step graph sees
the inputs of every denoising step of a float32 refinement of those cases, at the refiner's
default strength and at strength 1 (pure noise), so noisy and nearly clean x_t are covered.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from medrefine.checkpoint import file_sha256
from medrefine.errors import InputError
from medrefine.export.manifest import atomic_path, read_manifest, write_manifest
from medrefine.io import read_image, read_mask
from medrefine.preprocess import PreprocessConfig, preprocess, to_grid

logger = logging.getLogger(__name__)

CALIBRATION_CASES = 16
# Ops left in float. Quantising InstanceNormalization (GroupNorm's core in the step graph)
# makes the quantiser rename its bias to a name the graph already uses (an invalid graph);
# Resize is data movement. Quantising only the convolutions is no way out: the uint8
# hand-overs between float Add/Mul/activations moved coarse probabilities by up to 0.9
# (Dice 0.77 against float32 on Kvasir images).
FLOAT_OPS = {"InstanceNormalization", "Resize"}


def add_int8(onnx_dir: str | Path, calibration: str | Path | None = None) -> dict[str, Any]:
    """Write ``*.int8.onnx`` beside every float32 graph in ``onnx_dir`` and record them (and
    the calibration cases) in its manifest; returns the manifest.

    Args:
        onnx_dir: a folder written by ``export_onnx``.
        calibration: a data folder (images/ + masks/; its training split is used, at most
            ``CALIBRATION_CASES`` cases); default: the shipped sample images.
    """
    onnx_dir = Path(onnx_dir)
    manifest = read_manifest(onnx_dir)
    cases = calibration_cases(calibration)
    for part, entry in manifest["models"].items():
        graphs = {name: onnx_dir / g["file"] for name, g in entry["graphs"].items()}
        if part == "coarse":
            feeds = {"coarse": _coarse_feeds(entry["info"], cases)}
        else:
            feeds = _refiner_feeds(entry["info"], graphs, cases)
        int8 = {}
        for name, source in graphs.items():
            target = source.with_name(source.name.replace(".onnx", ".int8.onnx"))
            quantize_static(source, target, feeds[name])
            int8[name] = {"file": target.name, "sha256": file_sha256(target)}
        entry["int8"] = int8
        entry["int8_calibration"] = {
            "method": "static QDQ, per-channel int8 weights, uint8 activations, min/max",
            "cases": [Path(image).name for image, _ in cases],
            "inputs": {name: len(f) for name, f in feeds.items()},
        }
    manifest["quantize"] = sorted({*manifest.get("quantize", []), "int8"})
    write_manifest(onnx_dir, manifest)
    return manifest


def calibration_cases(calibration: str | Path | None = None) -> list[tuple[Path, Path]]:
    """(image, mask) paths: a data folder's training split, or the shipped samples."""
    if calibration is None:
        from medrefine.presets import PRESETS, sample_path

        cases = []
        for name in sorted(PRESETS):
            image = sample_path(name)
            mask = image.with_name(f"{image.stem}_mask.png")
            if image.is_file() and mask.is_file():
                cases.append((image, mask))
        if not cases:
            raise InputError(
                "no shipped sample images to calibrate the int8 graphs on; "
                "pass a data folder (images/ + masks/) as the calibration set"
            )
        return cases
    from medrefine.training.data import find_pairs, split_pairs

    pairs = find_pairs(calibration)
    chosen = split_pairs(calibration, pairs)["train"] or list(pairs.values())
    return [(p.image, p.mask) for p in chosen[:CALIBRATION_CASES]]


def _prepare(image_path: Path, pre: PreprocessConfig) -> tuple[np.ndarray, Any]:
    loaded = read_image(image_path)
    if loaded.is_volume:
        raise InputError(f"{image_path}: is a volume; calibrate on 2D images")
    return preprocess(loaded.array, pre, loaded.meta.get("source_dtype", "float32"))


def _coarse_feeds(info: dict, cases: list[tuple[Path, Path]]) -> list[dict[str, np.ndarray]]:
    from medrefine.inference import preprocess_config_from

    pre = preprocess_config_from(info["preprocess"])
    feeds = []
    for image_path, _ in cases:
        image01, _ = _prepare(image_path, pre)
        for view in (image01, image01[:, :, ::-1]):
            feeds.append({"image01": np.ascontiguousarray(view[None], dtype=np.float32)})
    return feeds


def _refiner_feeds(
    info: dict, graphs: dict[str, Path], cases: list[tuple[Path, Path]]
) -> dict[str, list[dict[str, np.ndarray]]]:
    """Inputs of both refiner graphs, recorded while the float32 graphs refine ``cases``."""
    from medrefine.diffusion import DiffusionConfig
    from medrefine.export.runtime import OnnxDenoiser
    from medrefine.inference import preprocess_config_from
    from medrefine.refine import Refiner

    denoiser = OnnxDenoiser.from_graphs(graphs, info)
    recorder = _Recorder(denoiser)
    pre = preprocess_config_from(info["preprocess"])
    refiner = Refiner(recorder, DiffusionConfig.from_dict(info["diffusion"]), pre, "cpu", info)
    settings = (
        replace(refiner.defaults, samples=1),
        replace(refiner.defaults, samples=1, strength=1.0),
    )
    for image_path, mask_path in cases:
        image01, grid = _prepare(image_path, pre)
        mask = (np.asarray(read_mask(mask_path)) > 0).astype(np.float32)
        coarse = to_grid(mask[None], grid.grid_size, grid.mode)[0][0]
        sigma = 0.02 * max(coarse.shape)  # a soft edge, as a coarse model's probabilities have
        coarse = cv2.GaussianBlur(coarse, (0, 0), sigma).clip(0, 1).astype(np.float32)
        for params in settings:
            refiner.refine_grid(image01, coarse, params)
    return {"condition": recorder.condition_feeds, "step": recorder.step_feeds}


class _Recorder:
    """An ``OnnxDenoiser`` that keeps the inputs it was called with."""

    def __init__(self, denoiser):
        self.denoiser = denoiser
        self.condition_feeds: list[dict[str, np.ndarray]] = []
        self.step_feeds: list[dict[str, np.ndarray]] = []

    def to(self, device):
        return self

    def eval(self):
        return self

    def encode_condition(self, image01: torch.Tensor, coarse: torch.Tensor):
        self.condition_feeds.append(
            {"image01": image01.numpy().copy(), "coarse": coarse.numpy().copy()}
        )
        return self.denoiser.encode_condition(image01, coarse)

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, cond):
        self.step_feeds.append(self.denoiser.step_inputs(x_t, t, cond))
        return self.denoiser(x_t, t, cond)


def quantize_static(source: Path, target: Path, feeds: list[dict[str, np.ndarray]]) -> None:
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(feeds)

        def get_next(self):
            return next(self.items, None)

    with tempfile.TemporaryDirectory(dir=target.parent) as scratch, _quiet_quantizer():
        # The exporter's shape annotations (value_info) trip the quantiser's shape inference
        # on the step graph ("existing shape differs"); they are hints only, so drop them and
        # let ORT's pre-processing (shape inference, constant folding) annotate afresh.
        model = onnx.load(str(source))
        del model.graph.value_info[:]
        plain, prepared = Path(scratch) / "plain.onnx", Path(scratch) / "prepared.onnx"
        onnx.save_model(model, str(plain))
        quant_pre_process(str(plain), str(prepared))
        with atomic_path(target) as tmp:
            quantize_static(
                prepared,
                tmp,
                Reader(),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
                calibrate_method=CalibrationMethod.MinMax,
                op_types_to_quantize=_quantized_ops(),
            )
    logger.info("wrote %s (%d calibration inputs)", target, len(feeds))


def _quantized_ops() -> list[str]:
    """What the quantiser covers by default (both its registries) less ``FLOAT_OPS``."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted((set(QDQRegistry) | set(QLinearOpsRegistry)) - FLOAT_OPS)


class _DropOrtNotes(logging.Filter):
    """The quantiser logs advice on the root logger; keep all but its errors out of the
    user's terminal (our own info line says what was written)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or "onnxruntime" not in record.pathname


@contextlib.contextmanager
def _quiet_quantizer():
    root, note_filter = logging.getLogger(), _DropOrtNotes()
    root.addFilter(note_filter)
    try:
        yield
    finally:
        root.removeFilter(note_filter)
