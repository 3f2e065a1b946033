"""Deployment: the models as ONNX graphs, and ONNX Runtime runners the pipeline can use.

    medrefine export --onnx OUT_DIR --preset polyp [--quantize int8]
    pipe = SegmentationPipeline(preset="polyp", backend="onnx", onnx_dir=OUT_DIR)

Modules, each importing only those above it in this list:

* ``manifest``: the export folder's ``manifest.json`` (format, checks) and file names;
* ``runtime``: ONNX Runtime runners with the interfaces the pipeline already uses
  (``CoarseSegmenter.predict_grid``, the denoiser's ``encode_condition`` and ``__call__``),
  so the sampling loop is the same code for both backends;
* ``quantize``: the graphs' int8 copies (static, calibrated on images through the runners);
* ``graphs``: torch -> ONNX, the graphs and ``manifest.json`` (and int8 copies on request);
* ``loading``: the runners over an export folder, or over the per-user cache, exported there
  on first use.

Nothing here is imported until the ONNX backend is asked for.
"""

from __future__ import annotations

from medrefine.export.graphs import OPSET, QUANTIZE_MODES, export_onnx
from medrefine.export.loading import (
    BACKENDS,
    cache_root,
    cached_onnx_dir,
    onnx_coarse,
    onnx_refiner,
)
from medrefine.export.manifest import MANIFEST, read_manifest
from medrefine.export.quantize import add_int8
from medrefine.export.runtime import OnnxCoarseSegmenter, OnnxDenoiser

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
