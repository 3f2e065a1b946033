"""Deployment: the models as ONNX graphs, and ONNX Runtime runners the pipeline can use.

    medrefine export --onnx OUT_DIR --preset polyp [--quantize int8]
    pipe = SegmentationPipeline(preset="polyp", backend="onnx", onnx_dir=OUT_DIR)

``graphs`` writes the graphs and ``manifest.json`` (torch -> ONNX), ``quantize`` their int8
copies (static, calibrated on images); ``runtime`` reads them back
into objects with the interfaces the pipeline already uses (``CoarseSegmenter.predict_grid``,
the denoiser's ``encode_condition`` and ``__call__``), so the sampling loop is the same code
for both backends. Nothing here is imported until the ONNX backend is asked for.
"""

from __future__ import annotations

from medrefine.export.graphs import (
    MANIFEST,
    OPSET,
    QUANTIZE_MODES,
    export_onnx,
    read_manifest,
)
from medrefine.export.quantize import add_int8
from medrefine.export.runtime import (
    BACKENDS,
    OnnxCoarseSegmenter,
    OnnxDenoiser,
    cache_root,
    cached_onnx_dir,
    onnx_coarse,
    onnx_refiner,
)

__all__ = [
    "BACKENDS",
    "MANIFEST",
    "OPSET",
    "QUANTIZE_MODES",
    "OnnxCoarseSegmenter",
    "OnnxDenoiser",
    "add_int8",
    "cache_root",
    "cached_onnx_dir",
    "export_onnx",
    "onnx_coarse",
    "onnx_refiner",
    "read_manifest",
]
