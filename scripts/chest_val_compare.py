"""Per-class val Dice of chest models (right lung, left lung, heart), and of the average of
their softmax when more than one is given: how a chest model is chosen without the test split.

    python scripts/chest_val_compare.py src/medrefine/weights/chest/coarse.safetensors \\
        runs/chest_v3/best.safetensors
"""

from __future__ import annotations

import argparse

import numpy as np

from medrefine.inference import CoarseSegmenter
from medrefine.io import read_image
from medrefine.metrics import dice
from medrefine.postprocess import postprocess_labels
from medrefine.presets import get_preset
from medrefine.training.data import find_pairs, read_label_map, split_pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("weights", nargs="+")
    ap.add_argument("--data", default="../shared/data/covid_cxr_lungs")
    ap.add_argument("--split", default="val", choices=["train", "val"])
    args = ap.parse_args()
    pairs = split_pairs(args.data, find_pairs(args.data, "masks_multiclass"), 0)[args.split]
    models = [CoarseSegmenter.from_weights(w, "cpu") for w in args.weights]
    post = get_preset("chest").postprocess
    names = list(args.weights) + (["softmax average"] if len(models) > 1 else [])
    scores: dict[str, list] = {n: [] for n in names}
    for pair in pairs:
        image, truth = read_image(pair.image), read_label_map(pair.mask, 3)
        probs = [m.predict(image.array, image.meta.get("source_dtype", "float32"))
                 for m in models]
        if len(models) > 1:
            probs.append(np.mean(probs, 0))
        for name, p in zip(names, probs, strict=True):
            labels = postprocess_labels(p.argmax(0).astype(np.uint8), post)
            scores[name].append([dice(labels == c, truth == c) for c in (1, 2, 3)])
    print(f"{args.split}: {len(pairs)} images; mean Dice right lung / left lung / heart")
    for name, rows in scores.items():
        r, lft, h = np.mean(rows, 0)
        print(f"{r:.4f} / {lft:.4f} / {h:.4f}  {name}")


if __name__ == "__main__":
    main()
