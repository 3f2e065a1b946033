"""Choose a binary preset's post-processing on val: threshold x smallest object x largest only.

Runs the coarse model once per val image (probabilities kept in memory), then scores every
combination of ``--thresholds``, ``--min-fractions`` (smallest object kept, as a fraction of
the image) and keep-largest on the same probabilities, as ``medrefine evaluate`` scores them:
Dice over the images that hold an object, the share of empty references left empty (normal
breast-ultrasound frames, where an empty mask is the right answer), and Dice over all images
(an empty reference scores 1 when left empty, 0 otherwise). The row printed first is the
best by ``--objective``; never run this on test.

usage:
  OMP_NUM_THREADS=2 python scripts/postprocess_sweep.py \\
      --weights runs/v2/breast_us/best.safetensors --data ../shared/data/busi --split val
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

from medrefine.metrics import dice
from medrefine.pipeline import SegmentationPipeline
from medrefine.postprocess import PostprocessConfig, postprocess
from medrefine.training.data import find_pairs, reference, split_pairs

OBJECTIVES = {
    # Dice over every image, empty references included (what a user sees on average)
    "all": lambda r: r["dice_all"],
    # the lesion images' Dice and the normal images left empty weigh the same
    "balanced": lambda r: 0.5 * r["dice_objects"] + 0.5 * r["empty_left_empty"],
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, required=True, help="coarse model (binary)")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--split", default="val", choices=("train", "val"))
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.4, 0.5, 0.6, 0.7, 0.8])
    ap.add_argument("--min-fractions", type=float, nargs="+",
                    default=[0.0, 0.0025, 0.005, 0.01, 0.02, 0.04])
    ap.add_argument("--fill-holes", action="store_true", help="fill holes in every row")
    ap.add_argument("--objective", choices=sorted(OBJECTIVES), default="balanced")
    ap.add_argument("--top", type=int, default=12, help="rows printed")
    args = ap.parse_args(argv)

    pipe = SegmentationPipeline(cpunet_weights=args.weights, use_diffusion=False)
    cases = split_pairs(args.data, find_pairs(args.data))[args.split]
    probs, truths = [], []
    for case in cases:
        result = pipe.run(case.image)
        probs.append(result.coarse_probs)
        truths.append(reference(case, result.image))
    rows = []
    for t, f, largest in itertools.product(args.thresholds, args.min_fractions, (False, True)):
        cfg = PostprocessConfig(threshold=t, min_object_fraction=f, keep_largest=largest,
                                fill_holes=args.fill_holes)
        objects, empties, everything = [], [], []
        for p, gt in zip(probs, truths, strict=True):
            pred = postprocess(p, cfg) > 0
            if gt.any():
                objects.append(dice(pred, gt))
                everything.append(objects[-1])
            else:
                empties.append(float(not pred.any()))
                everything.append(empties[-1])
        rows.append({"threshold": t, "min_object_fraction": f, "keep_largest": largest,
                     "dice_objects": float(np.mean(objects)) if objects else float("nan"),
                     "empty_left_empty": float(np.mean(empties)) if empties else float("nan"),
                     "dice_all": float(np.mean(everything))})
    key = OBJECTIVES[args.objective]
    rows.sort(key=key, reverse=True)
    n_empty = sum(not gt.any() for gt in truths)
    print(f"{args.data.name} {args.split}: {len(cases)} images, {n_empty} with an empty "
          f"reference; objective {args.objective}")
    print(f"{'threshold':>9s} {'min_frac':>8s} {'largest':>7s} {'Dice(objects)':>13s} "
          f"{'left empty':>10s} {'Dice(all)':>9s}")
    for r in rows[: args.top]:
        print(f"{r['threshold']:9.2f} {r['min_object_fraction']:8.4f} "
              f"{str(r['keep_largest']):>7s} {r['dice_objects']:13.4f} "
              f"{r['empty_left_empty']:10.3f} {r['dice_all']:9.4f}")
    base = next(r for r in rows if r["threshold"] == 0.5 and r["min_object_fraction"] == 0
                and not r["keep_largest"])
    print(f"default (0.5, none, all objects): Dice(objects) {base['dice_objects']:.4f}, left "
          f"empty {base['empty_left_empty']:.3f}, Dice(all) {base['dice_all']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
