"""Running a trained coarse model: weights file -> probabilities on the original pixel grid.

Shared by ``segment``, ``evaluate`` and the validation step of training, so all three score
exactly the same computation.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from medrefine.checkpoint import load_into, read_info
from medrefine.errors import ConfigError, InputError
from medrefine.models.blocks import fuse_conv_bn
from medrefine.models.registry import SegModelConfig, build_seg_model
from medrefine.preprocess import GridInfo, PreprocessConfig, from_grid, preprocess

logger = logging.getLogger(__name__)


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ConfigError(f"unknown device {device!r}; use auto, cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but no CUDA GPU is available; use --device "
                          "cpu")
    return torch.device(device)


# Test-time augmentation: a flip name -> the image axes it reverses in (B, C, H, W). The coarse
# model's probabilities are averaged over the identity and these views (each flipped back).
TTA_FLIPS = {"hflip": (-1,), "vflip": (-2,)}


def parse_tta(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"hflip,vflip"``, ``["hflip"]``, ``"none"``/``""``/``None`` -> the flips, in
    ``TTA_FLIPS`` order (so a setting names one computation however it is spelled)."""
    if value is None:
        return ()
    names = value.split(",") if isinstance(value, str) else list(value)
    names = [str(n).strip().lower() for n in names if str(n).strip()]
    if names in ([], ["none"], ["off"]):
        return ()
    unknown = [n for n in names if n not in TTA_FLIPS]
    if unknown:
        raise ConfigError(
            f"test-time augmentation {value!r}: unknown flip(s) {unknown}; use a "
            f"comma-separated list from {list(TTA_FLIPS)}, or none"
        )
    return tuple(n for n in TTA_FLIPS if n in names)


def check_tta(tta: Sequence[str], class_names: Sequence[str] | None) -> None:
    """Refuse a left-right flip of a model whose classes are sides of the body (e.g. ``chest``:
    right lung, left lung): its flipped view predicts the wrong side, and averaging mixes them."""
    sided = [c for c in class_names or () if "left" in c.lower() or "right" in c.lower()]
    if "hflip" in tta and sided:
        raise ConfigError(
            f"test-time hflip on a model with left/right classes {sided}: a "
            "mirrored image swaps the sides; use --tta vflip or none"
        )


def preprocess_config_from(data: dict) -> PreprocessConfig:
    data = dict(data)
    for key in ("size", "percentiles"):
        if key in data:
            data[key] = tuple(data[key])
    if isinstance(data.get("window"), list):
        data["window"] = tuple(data["window"])
    return PreprocessConfig(**data)


class CoarseSegmenter:
    """A coarse model with the preprocessing it was trained with.

    ``predict_grid`` takes image01 batches on the model grid; ``predict`` takes a raw image.
    Probabilities have K channels: K = 1 (foreground) for binary models, otherwise one per
    class including background (softmax).
    """

    def __init__(self, model: torch.nn.Module, model_cfg: SegModelConfig,
                 pre_cfg: PreprocessConfig, device: torch.device | str = "cpu",
                 info: dict | None = None):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        # channels-last: the same float32 arithmetic, about 25% faster convolutions on CPU
        self.channels_last = isinstance(model, torch.nn.Module)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.model_cfg = model_cfg
        self.pre_cfg = pre_cfg
        self.info = info or {}

    @classmethod
    def from_weights(cls, path: str | Path, device: str = "auto", fold_bn: bool = False
                     ) -> CoarseSegmenter:
        """``fold_bn``: fold BatchNorm into the convolutions (inference only; see
        ``models.blocks.fuse_conv_bn``)."""
        info = read_info(path)
        if info.get("kind") != "coarse":
            raise InputError(f"{path}: holds a {info.get('kind')!r} model, not a coarse "
                             "segmentation model")
        model_cfg = SegModelConfig.from_dict(info["model"])
        model = load_into(build_seg_model(model_cfg, pretrained=False), path)
        if fold_bn:
            model = fuse_conv_bn(model)
        return cls(model, model_cfg, preprocess_config_from(info["preprocess"]),
                   resolve_device(device), info)

    def describe(self) -> dict:
        return {"model": self.model_cfg.to_dict(), "preprocess": asdict(self.pre_cfg)}

    @torch.inference_mode()
    def predict_grid(
        self, image01: np.ndarray | torch.Tensor, tta: Sequence[str] = ()
    ) -> torch.Tensor:
        """image01 (B, C, H, W) on the grid -> probabilities (B, K, H, W) float32 tensor.

        ``tta``: flips from ``TTA_FLIPS``; the network then sees the image and each flipped
        view as one batch of (1 + len(tta)) * B, and the result is the mean of the views'
        probabilities, each flipped back. Empty: the network once, as trained.
        """
        flips = [TTA_FLIPS[name] for name in parse_tta(tta)]
        x = torch.as_tensor(image01, dtype=torch.float32, device=self.device)
        if not flips:
            return self._probs(x)
        batch = x.shape[0]
        views = torch.cat([x, *(x.flip(dims) for dims in flips)])  # ((1 + F) * B, C, H, W)
        probs = self._probs(views)
        total = probs[:batch].clone()
        for i, dims in enumerate(flips, 1):
            total += probs[i * batch : (i + 1) * batch].flip(dims)
        return total / (1 + len(flips))

    def _probs(self, x: torch.Tensor) -> torch.Tensor:
        """The network on x (B, C, H, W) -> probabilities (B, K, H, W)."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = self.model(x)
        if isinstance(logits, list):
            logits = logits[0]
        logits = logits.float()
        return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)

    def prepare(self, image: np.ndarray, source_dtype: str = "float32"
                ) -> tuple[np.ndarray, GridInfo]:
        """Raw (C, H, W) -> image01 on the model grid, checking the channel count."""
        if image.ndim != 3:
            raise InputError(f"expected a 2D image (C, H, W), got shape {image.shape}")
        return preprocess(image, self.pre_cfg, source_dtype)

    def predict(
        self, image: np.ndarray, source_dtype: str = "float32", tta: Sequence[str] = ()
    ) -> np.ndarray:
        """Raw (C, H, W) -> probabilities (K, H, W) on the original grid (``tta``: as in
        ``predict_grid``)."""
        image01, grid = self.prepare(image, source_dtype)
        probs = self.predict_grid(image01[None], tta)[0].cpu().numpy()
        return from_grid(probs, grid)


class CoarseEnsemble(CoarseSegmenter):
    """Several coarse models of one kind (e.g. the k fold models of a cross-validation,
    ``train --cv-folds k --cv-fold i``) run as one: their probabilities are averaged, as
    nnU-Net ensembles its folds. Every member must share the preprocessing, the number of
    classes and the class names, so the average is of like with like."""

    def __init__(self, members: list[CoarseSegmenter], paths: list[Path] | None = None):
        if len(members) < 2:
            raise ConfigError("an ensemble needs at least two coarse models")
        first = members[0]
        for i, m in enumerate(members[1:], 1):
            name = str(paths[i]) if paths else f"member {i}"
            if m.pre_cfg != first.pre_cfg:
                raise ConfigError(f"{name}: its preprocessing differs from the first model's; "
                                  "an ensemble averages models trained on the same grid")
            if m.model_cfg.num_classes != first.model_cfg.num_classes or \
                    m.info.get("class_names") != first.info.get("class_names"):
                raise ConfigError(f"{name}: its classes differ from the first model's "
                                  f"({m.model_cfg.num_classes} vs {first.model_cfg.num_classes})")
        self.members = members
        self.device = first.device
        self.model = None
        self.channels_last = False
        self.model_cfg = first.model_cfg
        self.pre_cfg = first.pre_cfg
        self.info = {**first.info, "ensemble": len(members)}

    def describe(self) -> dict:
        return {**super().describe(), "ensemble": len(self.members)}

    def _probs(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of the members' probabilities, (B, K, H, W) (flipped views included)."""
        total = self.members[0]._probs(x.to(self.members[0].device))
        for m in self.members[1:]:
            total = total + m._probs(x.to(m.device)).to(total.device)
        return total / len(self.members)


def coarse_from_weights(paths: list[Path], device: str = "auto", fold_bn: bool = False
                ) -> CoarseSegmenter:
    """One weights file -> its ``CoarseSegmenter``; several -> their ``CoarseEnsemble``."""
    return as_one([CoarseSegmenter.from_weights(p, device, fold_bn) for p in paths], paths)


def as_one(members: list[CoarseSegmenter], paths: list[Path]) -> CoarseSegmenter:
    """A single member as itself, several as their ``CoarseEnsemble`` (any backend)."""
    return members[0] if len(members) == 1 else CoarseEnsemble(members, list(paths))
