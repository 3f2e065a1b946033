"""Where the refiner's training masks come from: every kind of mask a user brings to ``refine``.

A user's masks rarely come from our own coarse model. They come from other segmenters (another
architecture, an early checkpoint, a low-resolution model), from a detector's box, from an
outline drawn in seconds, or they are shifted, too large, too small or broken into pieces. Each
training sample draws one source, with the shares in ``MaskSources``:

    coarse      the coarse model's prediction on the augmented image (or, with fold models,
                the fold model that did not see the image)
    segmenters  one of ``segmenter_weights`` (other trained segmenters, any grid)
    corrupt     the synthetic corruptions of ``corrupt.py`` (dilation, jitter, holes, blobs...)
    box         one box per object, tight to loose (up to 20% of the box's size either way)
    outline     a rough polygon or ellipse around each object, as drawn by hand
    shift       the mask moved by up to 8% of the image, and grown or shrunk by several pixels
    fragment    the mask broken into pieces, with parts missing
    lowres      the mask as a model at 1/4-1/8 of the grid would give it (blocky)

Model masks are made 0/1 in a share ``hard`` of cases, as other tools hand them over (PNGs).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from medrefine.errors import ConfigError
from medrefine.inference import CoarseSegmenter
from medrefine.prompts import jitter_box, mask_boxes
from medrefine.training.corrupt import corrupt_mask

logger = logging.getLogger(__name__)

MODEL_KINDS = ("coarse", "segmenters")


@dataclass(frozen=True)
class MaskSources:
    """Shares of the training masks by source (normalised to sum to 1; 0 turns one off)."""

    coarse: float = 0.3
    segmenters: float = 0.2
    corrupt: float = 0.15
    box: float = 0.1
    outline: float = 0.1
    shift: float = 0.05
    fragment: float = 0.05
    lowres: float = 0.05
    hard: float = 0.5  # share of model masks thresholded to 0/1 (not a source: a treatment)

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if not 0 <= value <= (1 if f.name == "hard" else float("inf")):
                raise ConfigError(f"mask_sources.{f.name} must be >= 0 (hard: in [0, 1]), "
                                  f"got {value}")
        if sum(self.shares().values()) <= 0:
            raise ConfigError("mask_sources: at least one source needs a share above 0")

    def shares(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if k != "hard"}


# ----------------------------------------------------------------- user-like synthetic masks
def box_mask(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One box per object, each side moved by up to 0-20% of the box's size."""
    out = np.zeros_like(mask)
    h, w = mask.shape
    loose = rng.uniform(0.0, 0.2)
    for box in mask_boxes(mask):
        x0, y0, x1, y1 = jitter_box(box, loose, rng)
        out[max(0, int(y0)):max(0, int(np.ceil(y1))), max(0, int(x0)):max(0, int(np.ceil(x1)))] = 1
    return out


def outline_mask(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A rough polygon (few vertices, jittered) or an ellipse around each object."""
    out = np.zeros_like(mask)
    side = max(mask.shape)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_NONE)
    for contour in contours:
        if cv2.contourArea(contour) < 4:
            continue
        if rng.random() < 0.35 and len(contour) >= 5:
            (cx, cy), (a, b), angle = cv2.fitEllipse(contour)
            scale = rng.uniform(0.9, 1.15)
            cv2.ellipse(out, ((cx, cy), (a * scale, b * scale), angle + rng.uniform(-10, 10)),
                        1, -1)
            continue
        eps = rng.uniform(0.01, 0.06) * cv2.arcLength(contour, True)
        poly = cv2.approxPolyDP(contour, eps, True).astype(np.float32)[:, 0]
        poly += rng.uniform(-0.025, 0.025, poly.shape) * side
        cv2.fillPoly(out, [np.round(poly).astype(np.int32)], 1)
    return out


def shift_mask(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Moved by up to 8% of the image; then grown or shrunk by up to ~4% of the side."""
    h, w = mask.shape
    dx, dy = rng.uniform(-0.08, 0.08) * w, rng.uniform(-0.08, 0.08) * h
    moved = cv2.warpAffine(mask, np.float32([[1, 0, dx], [0, 1, dy]]), (w, h),
                           flags=cv2.INTER_NEAREST)
    radius = int(rng.integers(0, max(2, int(0.04 * max(h, w)))))
    if radius == 0:
        return moved
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(moved, kernel) if rng.random() < 0.5 else cv2.erode(moved, kernel)


def fragment_mask(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Broken into pieces: a smooth random field cuts gaps through the mask."""
    h, w = mask.shape
    field = cv2.resize(rng.normal(0, 1, (8, 8)).astype(np.float32), (w, h),
                       interpolation=cv2.INTER_CUBIC)
    keep = (field > rng.uniform(-0.8, 0.3)).astype(np.uint8)
    return mask & keep


def lowres_mask(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The mask at 1/4..1/8 of the grid and back (nearest): a low-resolution model's steps."""
    h, w = mask.shape
    factor = int(rng.integers(4, 9))
    small = cv2.resize(mask, (max(1, w // factor), max(1, h // factor)),
                       interpolation=cv2.INTER_AREA if rng.random() < 0.5 else cv2.INTER_NEAREST)
    return cv2.resize((small > 0).astype(np.uint8) if small.dtype != np.uint8 else small, (w, h),
                      interpolation=cv2.INTER_NEAREST)


SYNTHETIC = {
    "corrupt": corrupt_mask,
    "box": box_mask,
    "outline": outline_mask,
    "shift": shift_mask,
    "fragment": fragment_mask,
    "lowres": lowres_mask,
}


# ----------------------------------------------------------------- other segmenters
def load_segmenters(paths: tuple[str, ...], coarse: CoarseSegmenter, device: str
                    ) -> list[CoarseSegmenter]:
    """Other binary segmenters on the coarse model's channels and intensity normalisation
    (their grid may differ: images are resized to it and the masks back)."""
    models = []
    for path in paths:
        model = CoarseSegmenter.from_weights(path, device)
        if model.model_cfg.num_classes != 1:
            raise ConfigError(f"{path}: segmenter_weights must be binary segmenters")
        if (model.pre_cfg.channels, model.pre_cfg.norm) != (coarse.pre_cfg.channels,
                                                          coarse.pre_cfg.norm):
            raise ConfigError(f"{path}: a segmenter must use the coarse model's channels and "
                              f"intensity normalisation ({coarse.pre_cfg.channels}, "
                              f"{coarse.pre_cfg.norm!r})")
        models.append(model)
    return models


def predict_on_grid(model: CoarseSegmenter, image01: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) on the refiner's grid -> (B, 1, H, W) probabilities on that grid."""
    size = tuple(model.pre_cfg.size)
    if tuple(image01.shape[-2:]) == size:
        return model.predict_grid(image01)[:, :1].cpu()
    small = F.interpolate(image01, size=size, mode="bilinear", antialias=True,
                          align_corners=False)
    probs = model.predict_grid(small)[:, :1].cpu()
    return F.interpolate(probs, size=tuple(image01.shape[-2:]), mode="bilinear",
                         align_corners=False)


# ----------------------------------------------------------------- the batch
def make_input_masks(sources: MaskSources, case_models: list[CoarseSegmenter],
                     segmenters: list[CoarseSegmenter], image01: torch.Tensor,
                     labels: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """(B, 1, H, W) input masks in [0, 1] for one batch, one source drawn per sample.

    ``case_models[i]`` is the coarse model for sample i (or the fold model that did not see it);
    samples that share a model run through it as one batch."""
    shares = sources.shares()
    if not segmenters:
        shares["coarse"] += shares.pop("segmenters")
    names = list(shares)
    p = np.array([shares[k] for k in names], np.float64)
    kinds = [names[i] for i in rng.choice(len(names), size=image01.shape[0], p=p / p.sum())]
    pick = rng.integers(0, max(1, len(segmenters)), size=image01.shape[0])
    out = torch.empty(image01.shape[0], 1, *image01.shape[-2:])
    groups: dict[int, tuple[CoarseSegmenter, list[int]]] = {}
    for i, kind in enumerate(kinds):
        if kind in MODEL_KINDS:
            model = case_models[i] if kind == "coarse" else segmenters[pick[i]]
            groups.setdefault(id(model), (model, []))[1].append(i)
    for model, rows in groups.values():
        out[rows] = predict_on_grid(model, image01[rows])
    for i, kind in enumerate(kinds):
        if kind in MODEL_KINDS:
            if rng.random() < sources.hard:
                out[i] = (out[i] > 0.5).float()
            continue
        gt = (labels[i] == 1).numpy().astype(np.uint8)
        out[i, 0] = torch.from_numpy(np.asarray(SYNTHETIC[kind](gt, rng), np.float32))
    return out
