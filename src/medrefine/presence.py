"""Is there an object at all? An image-level read-out of the coarse model's encoder.

On a normal breast-ultrasound frame the right mask is empty, and a segmenter trained on pixels
alone draws a confident blob on a shadow or a cyst-like texture. The presence gate is a
logistic regression on the coarse model's own encoder features (global average pools of its
three deepest maps, averaged over the test-time flips): P(the image holds an object). Where it
is below the gate's threshold, ``segment`` leaves the mask empty and says so in the report.

    gate = PresenceGate.load("presence.safetensors", "coarse.safetensors")
    p = gate.probability(image01, tta=("hflip",))        # image01: (C, H, W) on the model grid

The gate is fitted to one coarse model (``training.presence``) and names that file's sha256;
it reads the encoder from the coarse weights itself, so it runs the same on the torch and the
ONNX backend. It never empties a mask the user gave (``refine --mask``, boxes): those say
there is an object.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medrefine.checkpoint import file_sha256, load_state, read_info, save_tensors
from medrefine.errors import ConfigError, InputError
from medrefine.inference import TTA_FLIPS, CoarseSegmenter, parse_tta

# The encoder maps pooled into features: the three deepest of its five (strides 8, 16, 32).
PRESENCE_LEVELS = (2, 3, 4)


@torch.inference_mode()
def pooled_features(encoder: torch.nn.Module, image01: np.ndarray,
                    tta: Sequence[str] = (), levels: Sequence[int] = PRESENCE_LEVELS
                    ) -> np.ndarray:
    """The encoder's global average pools of ``levels``, concatenated, averaged over the image
    and its ``tta`` flips: image01 (C, H, W) on the model grid -> (F,) float32."""
    x = torch.as_tensor(image01, dtype=torch.float32)[None]  # (1, C, H, W)
    views = torch.cat([x, *(x.flip(TTA_FLIPS[n]) for n in parse_tta(tta))])  # (V, C, H, W)
    device = next(encoder.parameters()).device
    feats = encoder(views.to(device).contiguous(memory_format=torch.channels_last))
    pooled = [feats[k].float().mean(dim=(2, 3)).mean(dim=0) for k in levels]  # views averaged
    return torch.cat(pooled).cpu().numpy().astype(np.float32)


@dataclass(frozen=True)
class PresenceRule:
    """The logistic read-out: standardised features -> P(object); ``threshold``: below it the
    image is judged to hold no object."""

    mean: np.ndarray  # (F,)
    scale: np.ndarray  # (F,)
    coef: np.ndarray  # (F,)
    intercept: float
    threshold: float

    def __post_init__(self):
        shapes = {self.mean.shape, self.scale.shape, self.coef.shape}
        if len(shapes) != 1 or self.mean.ndim != 1:
            raise ConfigError(f"presence rule: mean, scale and coef must be one (F,) shape, got "
                              f"{[a.shape for a in (self.mean, self.scale, self.coef)]}")
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"presence threshold {self.threshold}: must lie in (0, 1)")

    def probability(self, features: np.ndarray) -> np.ndarray:
        """(F,) or (N, F) features -> P(object), () or (N,)."""
        z = (np.asarray(features, np.float64) - self.mean) / self.scale
        return 1.0 / (1.0 + np.exp(-(z @ self.coef + self.intercept)))

    def save(self, path: str | Path, info: dict[str, Any]) -> Path:
        """Write the rule and ``info`` (JSON-serialisable; ``coarse_sha256`` required) to a
        safetensors file, atomically."""
        if "coarse_sha256" not in info:
            raise ConfigError("a presence gate must name the coarse weights it reads "
                              "(info['coarse_sha256'])")
        tensors = {k: torch.as_tensor(np.asarray(v, np.float32)) for k, v in
                   (("mean", self.mean), ("scale", self.scale), ("coef", self.coef),
                    ("intercept", [self.intercept]))}
        return save_tensors(path, tensors, {**info, "kind": "presence",
                                            "threshold": self.threshold})


class PresenceGate:
    """A presence rule with the encoder it reads (from the coarse weights it was fitted to)."""

    def __init__(self, rule: PresenceRule, encoder: torch.nn.Module,
                 levels: Sequence[int] = PRESENCE_LEVELS, info: dict | None = None,
                 path: Path | None = None):
        self.rule = rule
        self.encoder = encoder.eval()
        self.levels = tuple(levels)
        self.info = info or {}
        self.path = path  # the file it was loaded from, for provenance

    @property
    def threshold(self) -> float:
        return self.rule.threshold

    @classmethod
    def load(cls, path: str | Path, coarse_path: str | Path, device: str = "auto"
             ) -> PresenceGate:
        """The gate in ``path`` over the encoder of ``coarse_path``, which must be the coarse
        weights it was fitted to (same sha256)."""
        info = read_info(path)
        if info.get("kind") != "presence":
            raise InputError(f"{path}: holds a {info.get('kind')!r} model, not a presence gate")
        sha = file_sha256(coarse_path)
        if info.get("coarse_sha256") != sha:
            raise InputError(
                f"{path}: this presence gate was fitted to other coarse weights than "
                f"{coarse_path} (sha256 {str(info.get('coarse_sha256'))[:12]}... vs "
                f"{sha[:12]}...); refit it (medrefine train --stage presence) or reinstall the "
                "preset"
            )
        state = load_state(path)
        try:
            rule = PresenceRule(
                state["mean"].numpy().astype(np.float64), state["scale"].numpy().astype(np.float64),
                state["coef"].numpy().astype(np.float64), float(state["intercept"][0]),
                float(info["threshold"]))
        except KeyError as err:
            raise InputError(f"{path}: presence gate without {err}; use an intact copy") from err
        coarse = CoarseSegmenter.from_weights(coarse_path, device, fold_bn=True)
        return cls(rule, coarse.model.encoder, info.get("levels", PRESENCE_LEVELS), info,
                   Path(path))

    def probability(self, image01: np.ndarray, tta: Sequence[str] = ()) -> float:
        """image01 (C, H, W) on the coarse model's grid -> P(the image holds an object)."""
        return float(self.rule.probability(pooled_features(self.encoder, image01, tta,
                                                           self.levels)))

    def decide(self, image01: np.ndarray, tta: Sequence[str] = ()) -> dict[str, Any]:
        """The report entry: ``{"probability", "threshold", "emptied"}``."""
        p = self.probability(image01, tta)
        return {"probability": p, "threshold": self.threshold, "emptied": p < self.threshold}
