"""LiteMedSAM's masks from loose boxes: a strong outside tool prompted as a hurried user or a
generous detector would, a mask source the refiners were never calibrated on.

One box per reference object, each side pushed out by a random 10-20% of the box's size
(seeded; clipped to the image), on the first N images of a split. Writes a folder that the
project's own commands take as it is:

    OUT/images/    the images (links to the data set's files)
    OUT/masks/     the reference masks (any non-zero label)
    OUT/lite/      LiteMedSAM's masks of the loose boxes (0/255 PNG)
    OUT/manifest.json   those images as the test split

then, for the never-worse check:

    python scripts/litemedsam_loose_boxes.py --data ../shared/data/kvasir_seg --out /tmp/loose/polyp
    medrefine refine --image /tmp/loose/polyp/images --mask /tmp/loose/polyp/lite \
        -o /tmp/loose/polyp/refined --preset polyp
    medrefine evaluate --pred /tmp/loose/polyp/lite|refined --data /tmp/loose/polyp --split test \
        --out DIR
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from medrefine.io import read_image, write_mask
from medrefine.litemedsam import load_litemedsam
from medrefine.prompts import mask_boxes
from medrefine.training.data import find_pairs, reference, split_pairs


def loose(box, size: tuple[int, int], rng: np.random.Generator, lo: float, hi: float):
    """``box`` with each side pushed out by ``lo``-``hi`` of its size, inside ``size``."""
    x0, y0, x1, y1 = box
    h, w = size
    dw, dh = x1 - x0, y1 - y0
    f = rng.uniform(lo, hi, 4)
    return (max(0.0, x0 - f[0] * dw), max(0.0, y0 - f[1] * dh),
            min(float(w), x1 + f[2] * dw), min(float(h), y1 + f[3] * dh))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="data folder (images/, masks/, manifest)")
    ap.add_argument("--split", default="test", choices=["val", "test"])
    ap.add_argument("-n", type=int, default=40, help="first N images of the split")
    ap.add_argument("--margin", type=float, nargs=2, default=(0.1, 0.2), metavar=("LO", "HI"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(2)
    for sub in ("images", "masks", "lite"):
        (args.out / sub).mkdir(parents=True, exist_ok=True)
    lite = load_litemedsam("cpu")
    rng = np.random.default_rng(args.seed)
    pairs = split_pairs(args.data, find_pairs(args.data))[args.split][:args.n]
    for pair in pairs:
        image = read_image(pair.image)
        truth = reference(pair, image)
        boxes = [loose(b, truth.shape, rng, *args.margin) for b in mask_boxes(truth)]
        probs = lite.predict(image.array, boxes, image.meta.get("source_dtype", "float32"))
        write_mask((probs > 0.5).astype(np.uint8), args.out / "lite" / f"{pair.image.stem}.png")
        write_mask(truth.astype(np.uint8), args.out / "masks" / f"{pair.image.stem}.png")
        link = args.out / "images" / pair.image.name
        if not link.exists():
            link.symlink_to(Path(pair.image).resolve())
    split = {"train": [], "val": [], "test": [p.image.stem for p in pairs]}
    (args.out / "manifest.json").write_text(json.dumps({"split": split}, indent=1))
    print(f"{len(pairs)} images, LiteMedSAM's masks of loose boxes in {args.out / 'lite'}")


if __name__ == "__main__":
    main()
