"""LiteMedSAM beside the refiner on the same box prompts (the box engines of ``refine --box``).

One ground-truth box per object, each side jittered by up to 5% of the box's size (seeded; the
boxes of ``scripts/mask_fixer_eval.py``'s box bar for the same split and seed), on the first N
images of a split, turned into masks three ways in one run:

1. LiteMedSAM alone (``medrefine.litemedsam``, the official recipe, probability > 0.5);
2. ``refine --box`` with the refiner engine (``--box-engine refiner``);
3. LiteMedSAM + refiner: LiteMedSAM's mask refined and reviewed as a given mask, which is what
   ``--box-engine litemedsam`` runs (where LiteMedSAM finds nothing in a box, that engine hands
   the image to the refiner engine, and so does this row);
4. LiteMedSAM kept: ``--box-engine litemedsam-only``, LiteMedSAM's mask post-processed as every
   mask is, the refiner run on it for its uncertainty and review score only;
5. fused: ``--box-engine fuse``, the probabilities of 2 and 3 averaged, then post-processed;
6. review-chosen: per image, whichever of 2 and 3 has the lower review score.

The row with the best val Dice, among the engines (2 to 5), is the preset's ``box_engine``;
6 is a candidate for a per-image choice. OUT/cases.json holds each image's Dice per row,
the two engines' review scores and the Dice between their masks, to study such choices on val.

Each row: Dice and HD95 (pixels) means against the reference masks (as ``medrefine evaluate
--pred`` scores them) and milliseconds per image (after one warm-up image; the torch threads
are printed). LiteMedSAM's masks are written as 0/255 PNGs to OUT/<stem>.png, with the boxes in
OUT/boxes.json (``medrefine refine --boxes``), so they can be scored again with ``medrefine
evaluate --pred OUT`` or refined as any other tool's masks.

usage:
  OMP_NUM_THREADS=2 python scripts/litemedsam_boxes.py --preset polyp \\
      --data ../shared/data/kvasir_seg --split val -n 40 --out eval/litemedsam/polyp_val \\
      | tee eval/litemedsam/polyp_val.txt
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from medrefine.io import read_image, stem_of, write_mask
from medrefine.litemedsam import empty_boxes, load_litemedsam
from medrefine.metrics import segmentation_metrics, summarize
from medrefine.pipeline import SegmentationPipeline
from medrefine.presets import PRESETS
from medrefine.prompts import jitter_box, mask_boxes
from medrefine.training.data import find_pairs, read_label_map, reference, split_pairs

ROWS = {
    "litemedsam": "LiteMedSAM alone",
    "refiner": "refine --box (refiner engine)",
    "litemedsam+refiner": "LiteMedSAM + refiner (litemedsam engine)",
    "litemedsam-only": "LiteMedSAM kept (litemedsam-only engine)",
    "fused": "fuse engine: mean of the two engines",
    "review-chosen": "lower review score of the two",
}
ENGINES = {"refiner": "refiner", "litemedsam+refiner": "litemedsam",
           "litemedsam-only": "litemedsam-only", "fused": "fuse"}


def box_cases(data: str, split: str, n: int, seed: int) -> list[tuple[object, list]]:
    """(pair, jittered boxes) for the first ``n`` images of the split that hold an object;
    the boxes are drawn in the split's order, as ``mask_fixer_eval.py`` draws them."""
    rng = np.random.default_rng(seed)
    cases = []
    for pair in split_pairs(data, find_pairs(data))[split]:
        gt = read_label_map(pair.mask, 1) == 1
        boxes = [list(jitter_box(b, 0.05, rng)) for b in mask_boxes(gt)]
        if boxes:
            cases.append((pair, boxes))
        if len(cases) == n:
            break
    return cases


def run_case(pipe: SegmentationPipeline, lite, pair, boxes: list
             ) -> tuple[dict[str, tuple], dict[str, float]]:
    """({row: (mask, seconds)}, facts) for one image; the LiteMedSAM mask is the first; the
    facts (review scores of the two engines, Dice between their masks) go in cases.json."""
    loaded = read_image(pair.image)
    dtype = loaded.meta.get("source_dtype", "float32")
    t = time.perf_counter()
    lite_mask = lite.predict(loaded.array, boxes, dtype) > 0.5
    t_lite = time.perf_counter() - t
    t = time.perf_counter()
    by_refiner_result = pipe.run(loaded, boxes=boxes, box_engine="refiner")
    by_refiner = by_refiner_result.mask
    t_refiner = time.perf_counter() - t
    out = {"litemedsam": (lite_mask, t_lite), "refiner": (by_refiner, t_refiner)}
    # what the two litemedsam engines run on LiteMedSAM's mask (tests/test_litemedsam.py
    # checks that they are these calls), without running LiteMedSAM again
    keep = replace(pipe.fixer().refine_params, keep_input=True)
    for key, params in (("litemedsam+refiner", None), ("litemedsam-only", keep)):
        t = time.perf_counter()
        if not empty_boxes(lite_mask, boxes):
            result = pipe.run(loaded, coarse_mask=lite_mask.astype(np.uint8), refine=params)
        else:  # the engines' fallback
            result = by_refiner_result
        out[key] = (result.mask, t_lite + time.perf_counter() - t)
        if key == "litemedsam+refiner":
            result_lite = result
    # the fuse engine: both engines' probabilities averaged, post-processed as every mask is
    t = time.perf_counter()
    fused = pipe.run(loaded, boxes=boxes, box_engine="fuse")
    out["fused"] = (fused.mask, time.perf_counter() - t)
    scores = {"refiner": by_refiner_result.review_score,
              "litemedsam+refiner": result_lite.review_score}
    chosen = min(scores, key=lambda k: (scores[k] is None, scores[k] or 0.0))
    out["review-chosen"] = (out[chosen][0], out["litemedsam+refiner"][1] + t_refiner)
    facts = {"review_" + k: v for k, v in scores.items()}
    facts["review_fused"] = fused.review_score
    facts["agreement"] = dice_of(out["refiner"][0] > 0, out["litemedsam+refiner"][0] > 0)
    return out, facts


def dice_of(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", required=True, choices=sorted(PRESETS))
    ap.add_argument("--data", required=True, help="data folder (images/, masks/, manifest)")
    ap.add_argument("--split", default="val", choices=["val", "test"])
    ap.add_argument("-n", type=int, default=40, help="first N images of the split (default 40)")
    ap.add_argument("--seed", type=int, default=0, help="box jitter seed")
    ap.add_argument("--out", type=Path, required=True, help="folder for LiteMedSAM's masks")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backend", default="torch", choices=["torch", "onnx", "onnx-int8"],
                    help="what runs the models (onnx-int8: LiteMedSAM's image encoder too)")
    ap.add_argument("--tta", default=None,
                    help="the coarse model's test-time flips (default: the preset's; none: off)")
    args = ap.parse_args()

    cases = box_cases(args.data, args.split, args.n, args.seed)
    if not cases:
        sys.exit(f"{args.data}: no {args.split} image with an object")
    args.out.mkdir(parents=True, exist_ok=True)
    # refine's default strength, over the defaults of whichever refiner runs
    int8 = args.backend == "onnx-int8"
    pipe = SegmentationPipeline(preset=args.preset, device=args.device,
                                refine={"strength": "auto"}, tta=args.tta,
                                backend="torch" if args.backend == "torch" else "onnx",
                                quantized=int8)
    lite = load_litemedsam(args.device, quantized=int8)
    run_case(pipe, lite, *cases[0])  # warm-up: the first call of each path is not timed

    rows: dict[str, list[dict]] = {k: [] for k in ROWS}
    fallbacks = 0
    per_case = {}
    for pair, boxes in cases:
        out, facts = run_case(pipe, lite, pair, boxes)
        stem = stem_of(pair.image)
        image = read_image(pair.image)
        gt = reference(pair, image)
        write_mask(out["litemedsam"][0].astype(np.uint8), args.out / f"{stem}.png", like=image)
        fallbacks += bool(empty_boxes(out["litemedsam"][0], boxes))
        for key, (mask, seconds) in out.items():
            rows[key].append({**segmentation_metrics(mask > 0, gt), "ms": 1000 * seconds})
        per_case[stem] = {**facts, **{k: rows[k][-1]["dice"] for k in ROWS}}
        print(f"{stem}: " + "  ".join(f"{k} {rows[k][-1]['dice']:.3f}" for k in ROWS),
              file=sys.stderr, flush=True)
    (args.out / "boxes.json").write_text(
        json.dumps({stem_of(pair.image): boxes for pair, boxes in cases}))
    (args.out / "cases.json").write_text(json.dumps(per_case, indent=1))

    print(f"box prompts, preset {args.preset}, {Path(args.data).name} {args.split}: first "
          f"{len(cases)} images with an object, one box per object, sides jittered up to 5% "
          f"(seed {args.seed}); torch threads {torch.get_num_threads()}, device {args.device}, "
          f"backend {args.backend}")
    print(f"{'':42s} {'Dice':>6s} {'HD95 px':>8s} {'ms/image':>9s}")
    ms_note = "(LiteMedSAM's time included in its engines' rows)"
    table = {}
    for key, label in ROWS.items():
        s = summarize(rows[key])
        undefined = s["hd95"]["n_undefined"]
        table[key] = {"dice": s["dice"]["mean"], "hd95": s["hd95"]["mean"],
                      "ms": s["ms"]["mean"], "n": s["dice"]["n"], "hd95_undefined": undefined}
        print(f"{label:42s} {s['dice']['mean']:6.3f} {s['hd95']['mean']:8.1f} "
              f"{s['ms']['mean']:9.0f}" + (f"  (HD95 undefined on {undefined})"
                                            if undefined else ""))
    print(ms_note)
    if fallbacks:
        print(f"LiteMedSAM found nothing in a box on {fallbacks} images: the litemedsam rows "
              "have the refiner engine's mask there, as the engines do")
    if args.split == "val":
        best = max(ENGINES, key=lambda k: table[k]["dice"])
        print(f"best val Dice among the engines: {ROWS[best]}: box_engine={ENGINES[best]!r}")
    print(json.dumps({"preset": args.preset, "split": args.split, "n": len(cases),
                      "seed": args.seed, "fallbacks": fallbacks, "rows": table}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
