"""Cross-validation study of the `chest` preset: out-of-fold (OOF) Dice on the train split,
and val Dice of single models against the ensemble of the fold models. No test image is read.

The five fold models come from ``medrefine train --config configs/chest.yaml --stage coarse
--cv-folds 5 --cv-fold K -o runs/chest_cv/foldK`` (K = 0..4): each trains on the train split
minus fold K, so each train image has one model that never saw it. With 76 train images the
OOF figures rest on 13x the images that the 6-image val split holds.

    python scripts/chest_cv_study.py runs/chest_cv \
        --shipped src/medrefine/weights/chest/coarse.safetensors

Prints, per class (right lung, left lung, heart): OOF mean Dice, precision and recall of the
fold models; OOF heart Dice when a bias is added to the heart's log-probability before the
argmax (does the model draw the heart too small or too big on images it did not see?); and
val Dice of the shipped model, each fold model, the fold ensemble (softmax average) and the
fold ensemble with the shipped model.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from medrefine.inference import CoarseSegmenter
from medrefine.io import read_image
from medrefine.metrics import dice
from medrefine.postprocess import postprocess_labels
from medrefine.presets import get_preset
from medrefine.training.data import cross_val_folds, find_pairs, read_label_map, split_pairs

CLASSES = ("right_lung", "left_lung", "heart")
BIASES = (-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0)


def scores(probs: np.ndarray, truth: np.ndarray, post, heart_bias: float = 0.0) -> list[list]:
    """[[dice, precision, recall] per class] for softmax ``probs`` (4, H, W)."""
    logp = np.log(np.clip(probs, 1e-8, 1.0))
    logp[3] += heart_bias
    labels = postprocess_labels(logp.argmax(0).astype(np.uint8), post)
    out = []
    for c in (1, 2, 3):
        p, t = labels == c, truth == c
        tp = float((p & t).sum())
        out.append([dice(p, t), tp / max(p.sum(), 1), tp / max(t.sum(), 1)])
    return out


def predict(model: CoarseSegmenter, pair) -> tuple[np.ndarray, np.ndarray]:
    image = read_image(pair.image)
    probs = model.predict(image.array, image.meta.get("source_dtype", "float32"))
    return probs, read_label_map(pair.mask, 3)


def table(rows: dict[str, np.ndarray]) -> str:
    lines = ["| model | " + " | ".join(f"{c} Dice (P / R)" for c in CLASSES) + " |",
             "|---|" + "---|" * len(CLASSES)]
    for name, r in rows.items():
        m = np.mean(r, 0)
        lines.append(f"| {name} | " + " | ".join(
            f"{m[i, 0]:.4f} ({m[i, 1]:.3f} / {m[i, 2]:.3f})" for i in range(3)) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cv_dir", type=Path, help="folder with fold0..foldK-1/best.safetensors")
    ap.add_argument("--shipped", type=Path, required=True)
    ap.add_argument("--data", default="../shared/data/covid_cxr_lungs")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0, help="the training config's seed")
    ap.add_argument("--out", type=Path, help="JSON with every figure printed")
    args = ap.parse_args()

    split = split_pairs(args.data, find_pairs(args.data, "masks_multiclass"), args.seed)
    fold_of = cross_val_folds(split["train"], args.folds, args.seed)
    members = [CoarseSegmenter.from_weights(args.cv_dir / f"fold{k}" / "best.safetensors", "cpu")
               for k in range(args.folds)]
    shipped = CoarseSegmenter.from_weights(args.shipped, "cpu")
    post = get_preset("chest").postprocess

    oof = {b: [] for b in BIASES}
    for pair in split["train"]:
        probs, truth = predict(members[fold_of[pair.stem]], pair)
        for b in BIASES:
            oof[b].append(scores(probs, truth, post, b))
    print(f"out-of-fold on train ({len(split['train'])} images, {args.folds} folds)")
    print(table({"fold models, OOF": np.array(oof[0.0])}))
    print("\nOOF heart Dice with a bias on the heart's log-probability:")
    heart_by_bias = {b: float(np.mean([r[2][0] for r in oof[b]])) for b in BIASES}
    print("  " + "  ".join(f"{b:+.2f}: {v:.4f}" for b, v in heart_by_bias.items()))

    val_rows: dict[str, list] = {"shipped": []}
    val_rows.update({f"fold{k}": [] for k in range(args.folds)})
    val_rows["fold ensemble"] = []
    val_rows["fold ensemble + shipped"] = []
    for pair in split["val"]:
        image = read_image(pair.image)
        dtype = image.meta.get("source_dtype", "float32")
        truth = read_label_map(pair.mask, 3)
        p_ship = shipped.predict(image.array, dtype)
        p_folds = [m.predict(image.array, dtype) for m in members]
        val_rows["shipped"].append(scores(p_ship, truth, post))
        for k, p in enumerate(p_folds):
            val_rows[f"fold{k}"].append(scores(p, truth, post))
        val_rows["fold ensemble"].append(scores(np.mean(p_folds, 0), truth, post))
        val_rows["fold ensemble + shipped"].append(
            scores(np.mean([*p_folds, p_ship], 0), truth, post))
    print(f"\nval ({len(split['val'])} images)")
    print(table({k: np.array(v) for k, v in val_rows.items()}))
    if args.out:
        args.out.write_text(json.dumps({
            "oof": np.mean(oof[0.0], 0).tolist(),
            "oof_heart_by_bias": {str(b): v for b, v in heart_by_bias.items()},
            "val": {k: np.mean(v, 0).tolist() for k, v in val_rows.items()},
            "columns": "per class [dice, precision, recall]",
        }, indent=2))


if __name__ == "__main__":
    main()
