"""Where is a coarse model's remaining error, and how much of it could a refiner take back?

For each case of a split this scores, at the original resolution and without post-processing:
  coarse        the coarse model's mask (probability > 0.5)
  coarse_flips  the mean of the coarse model over the four flips (test-time augmentation)
  refined       the refiner's default refinement (when the preset or --refiner has one)
  band_K        an oracle that corrects every pixel within K pixels (of the original image) of
                the coarse mask's boundary and nothing else: the most a refiner that moves the
                boundary by at most K pixels could gain
Errors outside band_16 are missed or false objects, which boundary refinement cannot fix.

usage: python scripts/refinement_headroom.py --preset skin --data ../shared/data/ph2 --split val
       [--refiner runs/skin_refiner_oof/best.safetensors] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from medrefine.inference import CoarseSegmenter
from medrefine.io import read_image
from medrefine.metrics import dice
from medrefine.preprocess import from_grid
from medrefine.presets import get_preset
from medrefine.refine import Refiner
from medrefine.training.data import find_pairs, read_label_map, split_pairs

FLIPS = [(), (-1,), (-2,), (-2, -1)]
BANDS = (1, 2, 4, 8, 16)  # pixels of the original image


def _flip(a: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    return np.flip(a, axes).copy() if axes else a


def band_oracle(coarse: np.ndarray, gt: np.ndarray, width: float) -> np.ndarray:
    """``coarse`` with the pixels within ``width`` of its boundary set to the ground truth."""
    inside, outside = ndi.distance_transform_edt(coarse), ndi.distance_transform_edt(~coarse)
    band = np.where(coarse, inside, outside) <= width
    out = coarse.copy()
    out[band] = gt[band]
    return out


def score_case(coarse: CoarseSegmenter, refiner: Refiner | None, image: Path, mask: Path
               ) -> dict[str, float]:
    loaded = read_image(image)
    gt = read_label_map(mask, 1) == 1
    image01, grid = coarse.prepare(loaded.array, loaded.meta["source_dtype"])
    views = coarse.predict_grid(np.stack([_flip(image01, f) for f in FLIPS]))[:, 0].numpy()
    views = np.stack([_flip(v, f) for v, f in zip(views, FLIPS, strict=True)])

    def full(probs: np.ndarray) -> np.ndarray:
        return from_grid(probs[None], grid)[0] > 0.5

    mask0 = full(views[0])
    row = {"coarse": dice(mask0, gt), "coarse_flips": dice(full(views.mean(0)), gt)}
    if refiner is not None:
        row["refined"] = dice(full(refiner.refine_grid(image01, views[0]).probs), gt)
    for k in BANDS:
        row[f"band_{k}"] = dice(band_oracle(mask0, gt, k), gt)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", required=True)
    parser.add_argument("--data", required=True, help="folder with images/, masks/, manifest")
    parser.add_argument("--split", default="val", choices=["train", "val", "test"])
    parser.add_argument("--refiner", help="refiner weights (default: the preset's, if shipped)")
    parser.add_argument("--json", type=Path, help="write the per-case scores here")
    args = parser.parse_args(argv)
    preset = get_preset(args.preset)
    coarse = CoarseSegmenter.from_weights(preset.coarse_weights, "cpu", fold_bn=True)
    shipped = preset.refiner_weights if preset.refiner_weights.is_file() else None
    refiner_path = args.refiner or shipped
    refiner = Refiner.from_weights(refiner_path, "cpu", fold_bn=True) if refiner_path else None
    pairs = split_pairs(args.data, find_pairs(args.data))[args.split]
    rows = {p.stem: score_case(coarse, refiner, p.image, p.mask) for p in pairs}
    keys = list(next(iter(rows.values())))
    print(f"{args.preset} {args.split} (n={len(rows)}), mean Dice:")
    for key in keys:
        print(f"  {key:13s} {np.mean([r[key] for r in rows.values()]):.4f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
