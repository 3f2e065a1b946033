"""The refiner as a mask fixer, scored on a split the way a user would run it.

Every figure comes from the command line tools, on 0/255 PNG masks as any other tool hands
them over:

1. our own coarse masks: ``medrefine evaluate --preset P`` (coarse and refined side by side);
2. other segmenters' masks, from segmenters the refiner never trained on
   (``scripts/train_mask_sources.sh``: ``heldout_*``): ``medrefine segment --weights W
   --no-refine`` writes them, ``medrefine refine`` refines them, ``medrefine evaluate --pred``
   scores both; the review score of each refined mask (refine's report.json) against its
   1 - Dice gives the Spearman correlation;
3. boxes: one tight ground-truth box per object, each side jittered by up to 5% of the box's
   size (seeded), through ``medrefine refine --boxes``; beside it the box itself as a mask and
   OpenCV GrabCut started from the same boxes;
4. shifted images (``--shifts``): the split's images with their colour, contrast or sharpness
   changed (seeded; the look of another device), segmented by the coarse model and refined,
   with and without the leave-alone gate: the refiner must not make them worse.

usage:
  python scripts/mask_fixer_eval.py --preset skin --data ../shared/data/ph2 --split test \\
      --sources runs/sources/skin --out eval/fixer_skin [--refiner R.safetensors]
  python scripts/mask_fixer_eval.py --out eval/fixer_skin --intervals
      (each source's review Spearman with its 95% bootstrap interval; nothing is run)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
from scipy import stats

from medrefine.io import read_image, stem_of, write_mask
from medrefine.prompts import boxes_to_mask, jitter_box, mask_boxes
from medrefine.training.data import find_pairs, read_label_map, split_pairs


def sh(*args: str) -> str:
    """Run a command; its standard output (exit 2, some inputs failed, is reported, not fatal)."""
    print("+", " ".join(args), flush=True)
    proc = subprocess.run(args, text=True, capture_output=True)
    if proc.returncode not in (0, 2):
        sys.exit(f"failed ({proc.returncode}): {' '.join(args)}\n{proc.stderr[-2000:]}")
    if proc.stdout.strip():
        print(proc.stdout.strip().splitlines()[-1])
    return proc.stdout


def evaluate(pred: Path, data: str, split: str, out: Path) -> dict:
    printed = sh("medrefine", "evaluate", "--pred", str(pred), "--data", data, "--split", split,
                 "-o", str(out))
    (out / "printed.txt").write_text(printed)
    summary = json.loads((out / "summary.json").read_text())["masks"]
    return {"dice": summary["dice"]["mean"], "iou": summary["iou"]["mean"],
            "hd95": summary["hd95"]["mean"], "n": summary["dice"]["n"]}


def per_case_dice(metrics_csv: Path) -> dict[str, float]:
    lines = metrics_csv.read_text().splitlines()
    head = lines[0].split(",")
    return {r.split(",")[0]: float(r.split(",")[head.index("dice")]) for r in lines[1:]}


def review_pairs(refine_dir: Path, eval_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Per image: the review score (refine's report.json) and 1 - Dice (evaluate's metrics)."""
    report = json.loads((refine_dir / "report.json").read_text())
    scores = {stem_of(Path(f["input"])): f["review_score"] for f in report["files"]
              if f["status"] == "ok"}
    dice = per_case_dice(eval_dir / "metrics.csv")
    stems = sorted(set(scores) & set(dice))
    return np.array([scores[s] for s in stems]), np.array([1 - dice[s] for s in stems])


def review_spearman(refine_dir: Path, eval_dir: Path) -> float:
    return float(stats.spearmanr(*review_pairs(refine_dir, eval_dir)).statistic)


def review_spearman_interval(refine_dir: Path, eval_dir: Path, resamples: int = 1000,
                             seed: int = 0) -> tuple[float, float]:
    """The 95% bootstrap interval of the review Spearman over the images (percentile,
    ``resamples`` draws with replacement, seeded)."""
    x, y = review_pairs(refine_dir, eval_dir)
    rng = np.random.default_rng(seed)
    draws = [stats.spearmanr(x[i], y[i]).statistic
             for i in (rng.integers(0, len(x), len(x)) for _ in range(resamples))]
    lo, hi = np.nanpercentile(draws, [2.5, 97.5])
    return float(lo), float(hi)


def print_intervals(out: Path) -> None:
    """Each source's review Spearman and its 95% bootstrap interval, from a folder this script
    wrote (nothing is run again)."""
    for refined in sorted(out.glob("*/refined")):
        evaluated = refined.parent / "eval_refined"
        if evaluated.is_dir():
            rho = review_spearman(refined, evaluated)
            lo, hi = review_spearman_interval(refined, evaluated)
            print(f"{refined.parent.name}: review Spearman {rho:.3f} (95% bootstrap interval "
                  f"{lo:.3f} to {hi:.3f})")


def grabcut(image_path: Path, boxes: list, shape: tuple[int, int]) -> np.ndarray:
    """OpenCV GrabCut started from the boxes (outside: background; inside: probably
    foreground), five iterations, on the image as 8-bit colour."""
    loaded = read_image(image_path)
    arr = loaded.array
    arr = (arr - arr.min()) / max(float(arr.max() - arr.min()), 1e-6) * 255
    rgb = np.repeat(arr, 3, 0) if arr.shape[0] == 1 else arr[:3]
    bgr = np.ascontiguousarray(rgb.transpose(1, 2, 0)[..., ::-1]).astype(np.uint8)
    init = np.where(boxes_to_mask(boxes, shape) > 0, cv2.GC_PR_FGD, cv2.GC_BGD).astype(np.uint8)
    bg, fg = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    try:
        cv2.grabCut(bgr, init, None, bg, fg, 5, cv2.GC_INIT_WITH_MASK)
    except cv2.error:  # e.g. a box covering the whole image: nothing to learn background from
        return (init == cv2.GC_PR_FGD).astype(np.uint8)
    return np.isin(init, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.uint8)


def score_shifts(args, pairs, out: Path, weights: list[str]) -> dict:
    from medrefine.pipeline import replace_range
    from medrefine.training.calibrate import SHIFTS, shift_image

    rng = np.random.default_rng(args.seed + 1)
    folders = {kind: out / "shifted" / kind for kind in SHIFTS}
    for pair in pairs:
        loaded = read_image(pair.image)
        image01 = replace_range(loaded.array, loaded.meta.get("source_dtype", "float32"))
        for kind, folder in folders.items():
            (folder / "images").mkdir(parents=True, exist_ok=True)
            shifted = shift_image(image01, kind, rng)
            rgb = np.rint(np.moveaxis(shifted, 0, -1) * 255).astype(np.uint8)
            cv2.imwrite(str(folder / "images" / f"{stem_of(pair.image)}.png"),
                        rgb[..., ::-1] if rgb.shape[-1] == 3 else rgb[..., 0])
    scores = {}
    for kind, folder in folders.items():
        sh("medrefine", "segment", str(folder / "images"), "-o", str(folder / "input"),
           "--preset", args.preset, "--no-refine", "--format", "png", "--overwrite")
        row = {"input": evaluate(folder / "input", args.data, args.split, folder / "eval_input")}
        for name, flag in (("refined", "--leave-alone"), ("refined_no_gate", "--no-leave-alone")):
            sh("medrefine", "refine", "--image", str(folder / "images"), "--mask",
               str(folder / "input"), "-o", str(folder / name), *weights, flag)
            row[name] = evaluate(folder / name, args.data, args.split, folder / f"eval_{name}")
        report = json.loads((folder / "refined" / "report.json").read_text())
        row["left_alone"] = sum(bool((f.get("refinement") or {}).get("left_alone"))
                                for f in report["files"])
        scores[kind] = row
    return scores


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset")
    ap.add_argument("--data")
    ap.add_argument("--split", default="test")
    ap.add_argument("--sources", help="folder of scripts/train_mask_sources.sh")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--refiner", help="refiner weights (default: the preset's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip", nargs="*", default=[], choices=["coarse", "outside", "boxes"])
    ap.add_argument("--shifts", action="store_true", help="also score shifted images")
    ap.add_argument("--intervals", action="store_true",
                    help="only print each source's review Spearman with its 95%% bootstrap "
                    "interval, from the folder an earlier run wrote to --out")
    args = ap.parse_args()
    if args.intervals:
        print_intervals(args.out)
        return 0
    missing = [f"--{n}" for n in ("preset", "data", "sources") if getattr(args, n) is None]
    if missing:
        ap.error(f"{', '.join(missing)} needed (all but --out can be left out with --intervals)")

    weights = ["--weights", args.refiner] if args.refiner else ["--preset", args.preset]
    out: Path = args.out
    images = out / "images"
    pairs = split_pairs(args.data, find_pairs(args.data))[args.split]
    if not images.is_dir():
        images.mkdir(parents=True)
        for pair in pairs:
            shutil.copy(pair.image, images / pair.image.name)
    results: dict = {"preset": args.preset, "split": args.split, "refiner": args.refiner}

    if "coarse" not in args.skip:
        ev = out / "coarse_eval"
        refiner = ["--refiner-weights", args.refiner, "--weights",
                   str(Path("src/medrefine/weights") / args.preset / "coarse.safetensors")] \
            if args.refiner else []
        printed = sh("medrefine", "evaluate", "--preset", args.preset, *refiner, "--data",
                     args.data, "--split", args.split, "-o", str(ev))
        (ev / "printed.txt").write_text(printed)
        s = json.loads((ev / "summary.json").read_text())
        results["coarse"] = {
            k: {"dice": s[k]["dice"]["mean"], "iou": s[k]["iou"]["mean"],
                "hd95": s[k]["hd95"]["mean"]} for k in ("coarse", "refined")}
        results["coarse"]["review_spearman"] = s["review_score_vs_error"]["rho"]

    if "outside" not in args.skip:
        results["outside"] = {}
        for src in sorted(Path(args.sources).glob("heldout_*/last.safetensors")):
            name = src.parent.name
            made, refined = out / name / "input", out / name / "refined"
            sh("medrefine", "segment", str(images), "-o", str(made), "--weights", str(src),
               "--no-refine", "--format", "png", "--overwrite")
            sh("medrefine", "refine", "--image", str(images), "--mask", str(made), "-o",
               str(refined), *weights)
            before = evaluate(made, args.data, args.split, out / name / "eval_input")
            after = evaluate(refined, args.data, args.split, out / name / "eval_refined")
            results["outside"][name] = {
                "input": before, "refined": after,
                "review_spearman": review_spearman(refined, out / name / "eval_refined")}

    if "boxes" not in args.skip:
        rng = np.random.default_rng(args.seed)
        table, box_dir, cut_dir = {}, out / "boxes" / "box_as_mask", out / "boxes" / "grabcut"
        box_dir.mkdir(parents=True, exist_ok=True)
        cut_dir.mkdir(parents=True, exist_ok=True)
        for pair in pairs:
            gt = read_label_map(pair.mask, 1) == 1
            boxes = [list(jitter_box(b, 0.05, rng)) for b in mask_boxes(gt)]
            if not boxes:
                continue
            stem = stem_of(pair.image)
            table[stem] = boxes
            write_mask(boxes_to_mask(boxes, gt.shape), box_dir / f"{stem}.png")
            write_mask(grabcut(pair.image, boxes, gt.shape), cut_dir / f"{stem}.png")
        (out / "boxes" / "boxes.json").write_text(json.dumps(table))
        refined = out / "boxes" / "refined"
        sh("medrefine", "refine", "--image", str(images), "--boxes",
           str(out / "boxes" / "boxes.json"), "-o", str(refined), *weights)
        results["boxes"] = {
            "box_as_mask": evaluate(box_dir, args.data, args.split, out / "boxes" / "eval_box"),
            "grabcut": evaluate(cut_dir, args.data, args.split, out / "boxes" / "eval_grabcut"),
            "refined": evaluate(refined, args.data, args.split, out / "boxes" / "eval_refined"),
        }
        results["boxes"]["review_spearman"] = review_spearman(refined,
                                                              out / "boxes" / "eval_refined")
    if args.shifts:
        results["shifts"] = score_shifts(args, pairs, out, weights)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
