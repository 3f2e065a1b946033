"""medrefine: medical image segmentation with diffusion refinement, built for CPUs."""

from __future__ import annotations

__version__ = "0.1.0"

from medrefine.errors import ConfigError, InputError, MedrefineError, UnsupportedFormatError
from medrefine.io import LoadedImage, read_image

__all__ = [
    "ConfigError",
    "InputError",
    "LoadedImage",
    "MedrefineError",
    "UnsupportedFormatError",
    "__version__",
    "read_image",
]
