"""Fitting a presence gate (``medrefine.presence``): which images hold no object at all.

    medrefine train --config configs/v2/breast_us_presence.yaml -o runs/v3/breast_us_presence

The coarse model runs once on every train and val image, as ``segment`` runs it (the preset's
post-processing and flips, no gate). Its encoder's pooled features feed a logistic regression
(scikit-learn, balanced classes) that tells images with an object from those without. The
regularisation ``C`` and the threshold are chosen on the train split by k-fold cross-validation
(out-of-fold probabilities), never on val: among the settings under which the gate by itself
empties at least ``target_empty`` of the object-free train images, the one with the best mean
Dice over the images with an object (an image wrongly gated scores 0). By itself: the coarse
model was trained on these images and has learnt which of them are empty, so its own empty
masks there overstate what it does on images it never saw. Val is then reported with and
without the gate. The final regression is fitted on all train images.

The gate is fitted to one coarse model: the first file of the preset's (or the given) coarse
models, whose sha256 it records.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from medrefine.checkpoint import file_sha256
from medrefine.errors import ConfigError
from medrefine.inference import CoarseSegmenter, coarse_from_weights, parse_tta
from medrefine.io import atomic_output, read_image
from medrefine.metrics import dice
from medrefine.postprocess import PostprocessConfig, postprocess
from medrefine.preprocess import from_grid
from medrefine.presence import PRESENCE_LEVELS, PresenceRule, pooled_features
from medrefine.presets import get_preset
from medrefine.training.data import find_pairs, reference, split_pairs

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PresenceTrainConfig:
    data_dir: str
    output_dir: str
    preset: str = ""  # the coarse model, post-processing and flips of this preset
    coarse_weights: tuple[str, ...] = ()  # or these coarse files (with the preset's settings)
    mask_dir: str = "masks"
    target_empty: float = 0.9  # share of object-free train images the gate alone must empty
    cs: tuple[float, ...] = (0.001, 0.003, 0.01, 0.03)  # inverse L2 strengths tried
    thresholds: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 11))
    folds: int = 5
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self):
        if not self.preset and not self.coarse_weights:
            raise ConfigError("a presence gate reads a coarse model: give preset or "
                              "coarse_weights")
        if not 0.0 < self.target_empty <= 1.0:
            raise ConfigError(f"target_empty {self.target_empty}: must lie in (0, 1]")
        if self.folds < 2 or not self.cs or not self.thresholds:
            raise ConfigError("folds must be >= 2 and cs, thresholds non-empty")
        if not all(0.0 < t < 1.0 for t in self.thresholds):
            raise ConfigError(f"thresholds {self.thresholds}: each must lie in (0, 1)")


def gated_scores(cases: list[dict], probs: np.ndarray, threshold: float) -> dict[str, float]:
    """What the gate at ``threshold`` gives on ``cases`` (each ``{"has_object", "empty",
    "dice"}``, the ungated mask's): the share of object-free images left empty, the mean Dice
    over images with an object (0 where gated) and how many of those it gated; and the share of
    object-free images the gate empties by itself."""
    pairs = list(zip(cases, probs < threshold, strict=True))
    none = [c["empty"] or g for c, g in pairs if not c["has_object"]]
    some = [0.0 if g else c["dice"] for c, g in pairs if c["has_object"]]
    lost = sum(int(g) for c, g in pairs if c["has_object"])
    alone = [g for c, g in pairs if not c["has_object"]]
    return {"empty_left_empty": float(np.mean(none)) if none else float("nan"),
            "gate_empties": float(np.mean(alone)) if alone else float("nan"),
            "object_dice": float(np.mean(some)) if some else float("nan"),
            "objects_gated": lost, "n_empty": len(none), "n_object": len(some)}


def choose(table: list[dict], target_empty: float) -> dict:
    """The row whose object Dice is best among those whose gate by itself empties at least
    ``target_empty`` of the object-free images (ties: the lower threshold, then the stronger
    regularisation); if none reaches it, the row whose gate empties the most."""
    reaching = [r for r in table if r["gate_empties"] >= target_empty]
    if reaching:
        return max(reaching, key=lambda r: (r["object_dice"], -r["threshold"], -r["C"]))
    return max(table, key=lambda r: (r["gate_empties"], r["object_dice"]))


def _classifier(c: float, seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(
        C=c, max_iter=5000, class_weight="balanced", random_state=seed))


@dataclass(frozen=True)
class _Coarse:
    """The coarse model as ``segment`` runs it on its own masks (no gate), and its encoder."""

    model: CoarseSegmenter
    encoder: Any
    tta: tuple[str, ...]
    post: PostprocessConfig
    first: Path


def _coarse(cfg: PresenceTrainConfig) -> _Coarse:
    preset = get_preset(cfg.preset) if cfg.preset else None
    paths = [Path(p) for p in cfg.coarse_weights] or preset.coarse_members
    model = coarse_from_weights(paths, cfg.device, fold_bn=True)
    if model.model_cfg.num_classes != 1:
        raise ConfigError("a presence gate is for binary models (an object or none)")
    own = preset is not None and paths == preset.coarse_members
    tta = preset.tta if own else parse_tta(model.info.get("tta"))
    encoder = CoarseSegmenter.from_weights(paths[0], cfg.device, fold_bn=True).model.encoder
    return _Coarse(model, encoder, tuple(tta),
                   preset.postprocess if preset else PostprocessConfig(), paths[0])


def _cases(coarse: _Coarse, pairs, desc: str) -> tuple[list[dict], np.ndarray]:
    """The ungated mask's emptiness and Dice, and the encoder features, per case."""
    rows, feats = [], []
    for case in tqdm(pairs, desc=desc, leave=False):
        image = read_image(case.image)
        image01, grid = coarse.model.prepare(image.array, image.meta.get("source_dtype",
                                                                         "float32"))
        probs = coarse.model.predict_grid(image01[None], coarse.tta)[0].cpu().numpy()
        probs = from_grid(probs, grid)  # (1, H, W), as CoarseSegmenter.predict gives it
        pred = postprocess(probs[0], coarse.post, spacing=image.spacing) > 0
        truth = reference(case, image)
        rows.append({"stem": case.stem, "has_object": bool(truth.any()),
                     "empty": not pred.any(),
                     "dice": float(dice(pred, truth)) if truth.any() else float(not pred.any())})
        feats.append(pooled_features(coarse.encoder, image01, coarse.tta))
    return rows, np.stack(feats)


def fit_presence(cfg: PresenceTrainConfig) -> Path:
    """Fit, choose and save the gate: ``output_dir/presence.safetensors`` and
    ``output_dir/presence_fit.json`` (every setting's cross-validated figures). Under torchrun
    only rank 0 fits (the fit is a few seconds of scikit-learn after one pass of the model)."""
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    out = Path(cfg.output_dir)
    if os.environ.get("RANK", "0") != "0":
        return out / "presence.safetensors"
    t0 = time.perf_counter()
    coarse = _coarse(cfg)
    first = coarse.first
    splits = split_pairs(cfg.data_dir, find_pairs(cfg.data_dir, cfg.mask_dir))
    train, train_x = _cases(coarse, splits["train"], "train images")
    val, val_x = _cases(coarse, splits["val"], "val images")
    train_y = np.array([r["has_object"] for r in train], int)
    if train_y.min() == train_y.max():
        raise ConfigError(f"{cfg.data_dir}: the train split needs images with and without an "
                          "object (empty masks) to fit a presence gate")
    folds = StratifiedKFold(cfg.folds, shuffle=True, random_state=cfg.seed)
    table = []
    for c in cfg.cs:
        oof = cross_val_predict(_classifier(c, cfg.seed), train_x, train_y, cv=folds,
                                method="predict_proba")[:, 1]
        table += [{"C": c, "threshold": t, **gated_scores(train, oof, t)} for t in cfg.thresholds]
    best = choose(table, cfg.target_empty)
    clf = _classifier(best["C"], cfg.seed).fit(train_x, train_y)
    scaler, logit = clf.named_steps["standardscaler"], clf.named_steps["logisticregression"]
    rule = PresenceRule(scaler.mean_, scaler.scale_, logit.coef_[0], float(logit.intercept_[0]),
                        best["threshold"])
    val_p = rule.probability(val_x)
    summary = {
        "data": str(cfg.data_dir), "mask_dir": cfg.mask_dir,
        "coarse_weights": str(first), "coarse_sha256": file_sha256(first),
        "tta": list(coarse.tta), "levels": list(PRESENCE_LEVELS), "C": best["C"],
        "chosen_on": f"train, {cfg.folds}-fold cross-validation (target_empty "
                     f"{cfg.target_empty})",
        "train_cv": {k: best[k] for k in best if k not in ("C", "threshold")},
        "train_ungated": gated_scores(train, np.ones(len(train)), 0.5),
        "val": gated_scores(val, val_p, best["threshold"]),
        "val_ungated": gated_scores(val, np.ones(len(val)), 0.5),
        "seed": cfg.seed, "minutes": (time.perf_counter() - t0) / 60,
        "config": asdict(cfg),
    }
    path = rule.save(out / "presence.safetensors", summary)
    with atomic_output(out / "presence_fit.json") as tmp:
        tmp.write_text(json.dumps({**summary, "threshold": best["threshold"], "table": table,
                                   "val_cases": [{**r, "probability": float(p)} for r, p in
                                                 zip(val, val_p, strict=True)]}, indent=1))
    logger.info("presence gate: C %s threshold %.2f; val %s", best["C"], best["threshold"],
                summary["val"])
    return path


def summary_lines(path: Path) -> list[str]:
    """The fit's figures in a few lines (``train --stage presence`` prints them)."""
    fit: dict[str, Any] = json.loads((path.parent / "presence_fit.json").read_text())
    lines = [f"presence gate: C {fit['C']}, threshold {fit['threshold']} (chosen on "
             f"{fit['chosen_on']})"]
    for name, key in (("train (cross-validated)", "train_cv"), ("val", "val"),
                      ("val without the gate", "val_ungated")):
        s = fit[key]
        lines.append(f"  {name:24s} empty images left empty {s['empty_left_empty']:.3f} "
                     f"(of {s['n_empty']}; the gate alone {s['gate_empties']:.3f}); Dice over "
                     "images with an object "
                     f"{s['object_dice']:.4f} (of {s['n_object']}; {s['objects_gated']} gated)")
    return lines
