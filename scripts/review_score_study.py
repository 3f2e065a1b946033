"""Which review score ranks refined masks by their error best? A study on val splits.

Reads the folders ``scripts/mask_fixer_eval.py --split val`` wrote (other segmenters' masks and
boxes, each refined by ``medrefine refine``, each scored by ``medrefine evaluate --pred``) and,
per source, prints the Spearman correlation with 1 - Dice of candidate scores built from what
``refine`` knows at run time:

* ``review``: the refined mask's summed uncertainty over its area (the refiner's own doubt;
  report.json's ``review.uncertainty``);
* ``change``: 1 - Dice between the mask given and the refined mask (how much the refiner had
  to change: a mask it rewrote is more likely still wrong);
* ``disagreement``: the auto-strength probe's 1 - Dice (input vs the first x0 estimate);
* ``second``: the second opinion, 1 - Dice between the refined mask and the preset's own
  coarse mask of the image (``medrefine segment --no-refine``, written once per folder to
  ``own_coarse/``), and ``review + w * second`` for several weights;
* sums of ``review`` with ``change`` at several weights;
* ``coarse_doubt``: the preset's coarse model's own doubt of the image, the entropy of its
  probabilities summed over the image and divided by its mask's area (the refined mask's
  ``review`` computed on the coarse model instead), added to the current score at several
  weights. Where the image itself is hard (an opacified lung, a faint lesion), both models
  may agree on the same wrong mask; their disagreement misses it, their doubt may not.

  python scripts/review_score_study.py eval/review_val_polyp eval/review_val_skin \
      eval/review_val_lung --presets polyp skin lung

The weights chosen here (on val) are the ones ``medrefine.fusion`` uses
(``SECOND_OPINION_WEIGHT``: the weight whose worst source is best); the test tables of the
README then measure them once.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage, stats

from medrefine.fusion import SECOND_OPINION_WEIGHT, mask_disagreement

WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
SECOND_WEIGHTS = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 16.0)
DOUBT_WEIGHTS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def per_case_dice(metrics_csv: Path) -> dict[str, float]:
    lines = metrics_csv.read_text().splitlines()
    head = lines[0].split(",")
    return {r.split(",")[0]: float(r.split(",")[head.index("dice")]) for r in lines[1:]}


def mask(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L")) > 127


def source_rows(source: Path, inputs: Path | None) -> list[dict]:
    """Per case: review, disagreement, change and the refined Dice."""
    report = json.loads((source / "refined" / "report.json").read_text())
    dice = per_case_dice(source / "eval_refined" / "metrics.csv")
    rows = []
    for f in report["files"]:
        if f["status"] != "ok":
            continue
        stem = Path(f["input"]).stem
        refined = mask(source / "refined" / f"{stem}.png")
        given = mask(inputs / f"{stem}.png") if inputs else None
        count = ndimage.label(refined)[1]
        rows.append({
            # the refiner's own doubt (report.json's review_score adds the second opinion)
            "stem": stem, "dice": dice[stem],
            "review": (f.get("review") or {}).get("uncertainty", f["review_score"]),
            "disagreement": (f.get("refinement") or {}).get("disagreement") or 0.0,
            "change": mask_disagreement(given, refined) if given is not None else np.nan,
            "small": -np.log(max(refined.mean(), 1e-4)), "pieces": float(count)})
    return rows


def own_coarse_masks(folder: Path, preset: str) -> Path:
    """The preset's coarse masks of the folder's images (``own_coarse/<stem>.png``)."""
    out = folder / "own_coarse"
    if not out.is_dir() or len(list(out.glob("*.png"))) < len(list((folder / "images").iterdir())):
        subprocess.run(["medrefine", "segment", str(folder / "images"), "-o", str(out),
                        "--preset", preset, "--no-refine", "--format", "png", "--overwrite"],
                       check=True, capture_output=True)
    return out


def coarse_doubts(folder: Path, preset: str) -> dict[str, float]:
    """Per image stem: the preset coarse model's entropy summed over the image / its mask's
    area (``fusion.review_score`` of its binary entropy), cached in ``own_coarse/doubt.json``."""
    cache = folder / "own_coarse" / "doubt.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    from medrefine.fusion import binary_entropy, review_score
    from medrefine.io import read_image, stem_of
    from medrefine.pipeline import SegmentationPipeline
    from medrefine.postprocess import postprocess

    pipe = SegmentationPipeline(preset=preset, use_diffusion=False)
    doubts = {}
    for path in sorted((folder / "images").iterdir()):
        loaded = read_image(path)
        probs = pipe.coarse.predict(loaded.array, loaded.meta.get("source_dtype", "float32"))[0]
        own = postprocess(probs, pipe.post, spacing=loaded.spacing)
        doubts[stem_of(path)] = review_score(binary_entropy(probs), own)
    cache.write_text(json.dumps(doubts))
    return doubts


def rho(x, y) -> float:
    return float(stats.spearmanr(x, y).statistic)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("folders", nargs="+", type=Path)
    p.add_argument("--presets", nargs="+", help="each folder's preset (default: its "
                   "results.json)")
    args = p.parse_args()
    presets = args.presets or [json.loads((f / "results.json").read_text())["preset"]
                               for f in args.folders]
    table, parts = {}, {}
    for folder, preset in zip(args.folders, presets, strict=True):
        own = own_coarse_masks(folder, preset)
        doubts = coarse_doubts(folder, preset)
        for source in sorted(d for d in folder.iterdir() if (d / "refined").is_dir()
                             and (d / "eval_refined").is_dir()):
            inputs = source / ("input" if (source / "input").is_dir() else "box_as_mask")
            rows = source_rows(source, inputs)
            err = [1 - r["dice"] for r in rows]
            review = np.array([r["review"] for r in rows])
            chg = np.array([r["change"] for r in rows])
            dis = np.array([r["disagreement"] for r in rows])
            small = np.array([r["small"] for r in rows])
            pieces = np.array([r["pieces"] for r in rows])
            second = np.array([mask_disagreement(mask(source / "refined" / f"{r['stem']}.png"),
                                      mask(own / f"{r['stem']}.png")) for r in rows])
            doubt = np.array([doubts[r["stem"]] for r in rows])
            current = review + SECOND_OPINION_WEIGHT * second
            cells = {"review": rho(review, err), "second": rho(second, err),
                     **{f"review+{w}*second": rho(review + w * second, err)
                        for w in SECOND_WEIGHTS},
                     "coarse_doubt": rho(doubt, err),
                     **{f"current+{w}*doubt": rho(current + w * doubt, err)
                        for w in DOUBT_WEIGHTS},
                     "disagreement": rho(dis, err),
                     "change": rho(chg, err), "small": rho(small, err),
                     "pieces": rho(pieces, err)}
            for w in WEIGHTS[1:]:
                cells[f"review+{w}*dis"] = rho(review + w * dis, err)
            for w in (0.01, 0.02, 0.05, 0.1):
                cells[f"review+{w}*small"] = rho(review + w * small, err)
            for w in (0.02, 0.05, 0.1):
                cells[f"review+{w}*pieces"] = rho(review + w * (pieces - 1), err)
            table[f"{folder.name}/{source.name}"] = (len(rows), cells)
            parts.setdefault(preset, []).append((source.name, review, second, doubt, err))
    names = list(next(iter(table.values()))[1])
    print("| source | n | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for key, (n, cells) in table.items():
        print(f"| {key} | {n} | " + " | ".join(f"{cells[k]:.3f}" for k in names) + " |")
    print("| **min** | | " + " | ".join(
        f"{min(c[k] for _, c in table.values()):.3f}" for k in names) + " |")
    print("| **mean** | | " + " | ".join(
        f"{np.mean([c[k] for _, c in table.values()]):.3f}" for k in names) + " |")
    print_grid(parts)


def print_grid(parts: dict[str, list]) -> None:
    """Per preset: ``review + 5 * second + wd * coarse_doubt`` (the second opinion's weight as
    chosen before, ``fusion.SECOND_OPINION_WEIGHT``) over the doubt weights, each weight's worst
    and mean Spearman over the preset's sources. The rule the presets' ``review_doubt_weight``
    follows: the weight with the best worst source; 0 (no doubt term) unless another weight
    beats its worst source by more than 0.01; ties to the smaller weight."""
    print("\n| preset | doubt weight | worst source | mean | per source |")
    print("|---|---|---|---|---|")
    for preset, sources in parts.items():
        grid = []
        for wd in (0.0, *DOUBT_WEIGHTS):
            per = [rho(rv + SECOND_OPINION_WEIGHT * sec + wd * dbt, err)
                   for _, rv, sec, dbt, err in sources]
            grid.append((min(per), float(np.mean(per)), wd, per))
        best = max(grid, key=lambda g: (g[0], -g[2]))
        chosen = best if best[0] > grid[0][0] + 0.01 else grid[0]
        for g in grid:
            tag = " **chosen**" if g is chosen else ""
            cells = ", ".join(f"{n} {r:.3f}"
                              for (n, *_), r in zip(sources, g[3], strict=True))
            print(f"| {preset} | {g[2]}{tag} | {g[0]:.3f} | {g[1]:.3f} | {cells} |")


if __name__ == "__main__":
    main()
