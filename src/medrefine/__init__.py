"""medrefine: medical image segmentation with diffusion refinement, built for CPUs.

    from medrefine import SegmentationPipeline, read_image, write_mask
"""

from __future__ import annotations

__version__ = "0.1.0"

from medrefine.errors import ConfigError, InputError, MedrefineError, UnsupportedFormatError
from medrefine.io import LoadedImage, read_image, read_mask, write_mask

__all__ = [
    "ConfigError",
    "InputError",
    "LoadedImage",
    "MedrefineError",
    "PipelineModels",
    "RefineParams",
    "SegmentationPipeline",
    "SegmentationResult",
    "UnsupportedFormatError",
    "__version__",
    "read_image",
    "read_mask",
    "resolve_models",
    "write_mask",
]

# The pipeline imports torch; load it on first use so `medrefine info` and the readers stay fast.
_LAZY = {
    "SegmentationPipeline": "medrefine.pipeline",
    "SegmentationResult": "medrefine.pipeline",
    "RefineParams": "medrefine.refine",
    "PipelineModels": "medrefine.resolve",
    "resolve_models": "medrefine.resolve",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medrefine' has no attribute {name!r}")
