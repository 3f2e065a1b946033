"""Which review score ranks refined masks by their error best? A study on val splits.

Reads the folders ``scripts/mask_fixer_eval.py --split val`` wrote (other segmenters' masks and
boxes, each refined by ``medrefine refine``, each scored by ``medrefine evaluate --pred``) and,
per source, prints the Spearman correlation with 1 - Dice of candidate scores built from what
``refine`` knows at run time:

* ``review``: the current score, the refined mask's summed uncertainty over its area;
* ``change``: 1 - Dice between the mask given and the refined mask (how much the refiner had
  to change: a mask it rewrote is more likely still wrong);
* ``disagreement``: the auto-strength probe's 1 - Dice (input vs the first x0 estimate);
* sums of ``review`` with ``change`` at several weights.

  python scripts/review_score_study.py eval/review_val_polyp eval/review_val_skin \
      eval/review_val_lung

The weight chosen here (on val) is the one ``medrefine.fusion.review_score`` uses; the test
tables of the README then measure it once.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage, stats

WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)


def per_case_dice(metrics_csv: Path) -> dict[str, float]:
    lines = metrics_csv.read_text().splitlines()
    head = lines[0].split(",")
    return {r.split(",")[0]: float(r.split(",")[head.index("dice")]) for r in lines[1:]}


def mask(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L")) > 127


def change(a: np.ndarray, b: np.ndarray) -> float:
    total = float(a.sum() + b.sum())
    return 0.0 if total == 0 else 1.0 - 2.0 * float((a & b).sum()) / total


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
            "stem": stem, "dice": dice[stem], "review": f["review_score"],
            "disagreement": (f.get("refinement") or {}).get("disagreement") or 0.0,
            "change": change(given, refined) if given is not None else np.nan,
            "small": -np.log(max(refined.mean(), 1e-4)), "pieces": float(count)})
    return rows


def rho(x, y) -> float:
    return float(stats.spearmanr(x, y).statistic)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("folders", nargs="+", type=Path)
    args = p.parse_args()
    table = {}
    for folder in args.folders:
        for source in sorted(d for d in folder.iterdir() if (d / "refined").is_dir()):
            inputs = source / ("input" if (source / "input").is_dir() else "box_as_mask")
            rows = source_rows(source, inputs)
            err = [1 - r["dice"] for r in rows]
            review = np.array([r["review"] for r in rows])
            chg = np.array([r["change"] for r in rows])
            dis = np.array([r["disagreement"] for r in rows])
            small = np.array([r["small"] for r in rows])
            pieces = np.array([r["pieces"] for r in rows])
            cells = {"review": rho(review, err), "disagreement": rho(dis, err),
                     "change": rho(chg, err), "small": rho(small, err),
                     "pieces": rho(pieces, err)}
            for w in WEIGHTS[1:]:
                cells[f"review+{w}*dis"] = rho(review + w * dis, err)
            for w in (0.01, 0.02, 0.05, 0.1):
                cells[f"review+{w}*small"] = rho(review + w * small, err)
            for w in (0.02, 0.05, 0.1):
                cells[f"review+{w}*pieces"] = rho(review + w * (pieces - 1), err)
            table[f"{folder.name}/{source.name}"] = (len(rows), cells)
    names = list(next(iter(table.values()))[1])
    print("| source | n | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for key, (n, cells) in table.items():
        print(f"| {key} | {n} | " + " | ".join(f"{cells[k]:.3f}" for k in names) + " |")
    print("| **min** | | " + " | ".join(
        f"{min(c[k] for _, c in table.values()):.3f}" for k in names) + " |")
    print("| **mean** | | " + " | ".join(
        f"{np.mean([c[k] for _, c in table.values()]):.3f}" for k in names) + " |")


if __name__ == "__main__":
    main()
