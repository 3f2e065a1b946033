"""``medrefine evaluate --data DIR --split test --out OUT``: score a model set on a data folder.

DIR holds images/ and masks/ paired by stem, split by its manifest.json (else a seeded
80/10/10 split). For every case of the split the pipeline runs as ``segment`` would, and
OUT receives:

  masks/<stem>.png   the output mask (0/255, original size)
  metrics.csv        one row per image: stem, dice, iou, precision, recall, hd95, assd, bf_score
                     (distances in pixels); with refinement also coarse_* (the coarse model's
                     mask with the same post-processing: what --no-refine writes),
                     review_score; and seconds (pipeline time)
  summary.json       mean/std/median per metric, n, split, provenance; with refinement the
                     Spearman correlation of review_score with 1 - dice and the pixel AUROC of
                     the uncertainty map for finding wrong pixels
  panels/<stem>.png  image | coarse | refined | ground truth | uncertainty, first --panels cases

The table printed at the end is the one model cards quote.

``--pred MASKS`` scores masks that already exist (made by any tool: another segmenter,
``medrefine segment`` or ``medrefine refine``) instead of running a model: MASKS/<stem>.png (or
.nii.gz, .dcm, ...) for every case of the split; a case without one counts as failed.

examples:
  medrefine evaluate --preset polyp --data shared/data/kvasir_seg --split test --out eval/
  medrefine evaluate --weights c.safetensors --no-refine --data ph2 --split val --out ev/
  medrefine evaluate --pred nnunet_masks/ --data shared/data/kvasir_seg --split test --out ev/
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import sys
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats
from tqdm import tqdm

from medrefine.batch.guard import (
    ReadFiles,
    check_writable,
    option_files,
    out_lock,
    refuse_replacing_reads,
)
from medrefine.batch.records import failure_reason, report_failure, write_json
from medrefine.batch.segment import display_image01
from medrefine.commands.options import (
    add_model_options,
    add_out_option,
    add_postprocess_options,
    add_refine_options,
    build_pipeline,
    provenance,
)
from medrefine.errors import InputError
from medrefine.io import atomic_output, read_image, read_mask, stem_of, write_mask
from medrefine.metrics import per_class_metrics, segmentation_metrics, summarize
from medrefine.pipeline import SegmentationPipeline
from medrefine.postprocess import postprocess
from medrefine.training.data import Pair, find_pairs, reference, reference_labels, split_pairs

logger = logging.getLogger(__name__)

METRICS = ("dice", "iou", "precision", "recall", "hd95", "assd", "bf_score")
SPLITS = ("test", "val", "train", "all")
AUROC_SEED = 0


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "evaluate",
        help="score a model set on a data split",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--data",
        "--data-dir",
        dest="data",
        type=Path,
        required=True,
        help="folder with images/, masks/ and manifest.json",
    )
    parser.add_argument(
        "--split",
        choices=SPLITS,
        default="test",
        help="which cases (default test; all = every pair in the folder)",
    )
    add_out_option(parser)
    parser.add_argument(
        "--mask-dir", default="masks",
        help="mask sub-folder (default masks); a+b stacks binary folders into a label map, "
        "label 1 from a, 2 from b on top (e.g. masks_lung+masks)",
    )
    parser.add_argument(
        "--mask-labels", type=int, nargs="+", default=(), metavar="N",
        help="the reference foreground is these label values of the mask files (e.g. "
        "--mask-dir masks_multiclass --mask-labels 2 for one class); default: any non-zero",
    )
    parser.add_argument(
        "--panels",
        type=int,
        default=8,
        metavar="N",
        help="comparison panels for the first N cases (default 8; 0 = none)",
    )
    parser.add_argument(
        "--auroc-pixels",
        type=int,
        default=5000,
        metavar="N",
        help="pixels sampled per image for the uncertainty AUROC (default 5000)",
    )
    parser.add_argument(
        "--pred",
        type=Path,
        metavar="MASKS",
        help="score the masks in this folder (named by case stem) instead of running a model",
    )
    add_model_options(parser)
    add_refine_options(parser)
    add_postprocess_options(parser)
    parser.set_defaults(func=run)
    return parser


def split_cases(data: Path, split: str, mask_dir: str) -> list[Pair]:
    pairs = find_pairs(data, mask_dir)
    cases = list(pairs.values()) if split == "all" else split_pairs(data, pairs)[split]
    if not cases:
        raise InputError(
            f"{data}: the {split} split has no image/mask pairs; check "
            "manifest.json or pick another --split"
        )
    return cases


def run(args: argparse.Namespace) -> int:
    started = datetime.now(UTC).isoformat(timespec="seconds")
    t_start = time.perf_counter()
    if args.panels < 0 or args.auroc_pixels < 1:
        raise InputError("--panels must be >= 0 and --auroc-pixels >= 1")
    cases = split_cases(args.data, args.split, args.mask_dir)
    if args.pred is not None:
        if args.preset or args.weights or args.refiner_weights:
            raise InputError("--pred scores existing masks; leave out --preset/--weights")
        if not args.pred.is_dir():
            raise InputError(f"{args.pred}: --pred needs a folder of masks named by case stem")
    check_writable(args.out)
    # -o the data folder would write the predicted masks over the reference masks
    reads = ReadFiles([p for c in cases for p in c.files])
    for path in option_files(args, "pred", "weights", "refiner_weights"):
        reads.add(path)
    outputs = [args.out / "metrics.csv", args.out / "summary.json"]
    outputs += [args.out / sub / f"{c.stem}.png" for c in cases for sub in ("masks", "panels")]
    refuse_replacing_reads(outputs, reads, args.out)
    with out_lock(args.out):
        return _evaluate(args, cases, started, t_start)


def _evaluate(args: argparse.Namespace, cases: list[Pair], started: str, t_start: float) -> int:
    """Score ``cases`` into OUT (held by this run): metrics.csv, summary.json, masks, panels."""
    pipe = None if args.pred is not None else build_pipeline(args)
    predicted = mask_index(args.pred) if args.pred is not None else {}
    refining = pipe is not None and pipe.refiner is not None
    columns = ["stem", *METRICS, "reference_empty", "pred_empty"]
    classes = class_names(pipe)
    columns += [f"{name}_{m}" for name in classes for m in METRICS]
    if refining:
        columns += [f"coarse_{m}" for m in METRICS] + ["review_score"]
    columns.append("seconds")

    rows: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    pixels = PixelSample(args.auroc_pixels, AUROC_SEED)
    bar = tqdm(
        cases,
        desc="evaluate",
        unit="image",
        disable=True if getattr(args, "quiet", False) else None,
    )
    with atomic_output(args.out / "metrics.csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for case in bar:
            try:
                if pipe is None:
                    row = score_case(case, predicted.get(case.stem), args.pred,
                                     tuple(args.mask_labels))
                else:
                    row = evaluate_case(
                        pipe, case, args.out, pixels, panel=len(rows) < args.panels,
                        classes=classes, mask_labels=tuple(args.mask_labels),
                    )
            except Exception as err:  # go on past a bad case; it is listed in summary.json
                reason = failure_reason(err)
                report_failure(case.stem, reason, lambda s: tqdm.write(s, file=sys.stderr))
                failed.append({"stem": case.stem, "image": str(case.image), "error": reason})
                continue
            rows.append(row)
            writer.writerow({k: _csv_value(row[k]) for k in columns})
            fh.flush()

    summary = build_summary(rows, refining, pixels, label="coarse" if pipe else "masks")
    if classes:  # multi-class model: the scores above are of the union of the classes
        summary["per_class"] = {
            name: summarize([{m: r[f"{name}_{m}"] for m in METRICS} for r in rows])
            for name in classes
        }
    summary.update(
        {
            "data_dir": str(args.data),
            "split": args.split,
            "n": len(rows),
            "n_failed": len(failed),
            "failed": failed,
            "started": started,
            "seconds": time.perf_counter() - t_start,
            "provenance": provenance(pipe, args) if pipe else {"pred": str(args.pred)},
        }
    )
    write_json(args.out / "summary.json", summary)
    print(format_table(summary))
    return 2 if failed else 0


def evaluate_case(
    pipe: SegmentationPipeline, case: Pair, out_dir: Path, pixels: PixelSample, panel: bool,
    classes: list[str] | None = None, mask_labels: tuple[int, ...] = (),
) -> dict[str, Any]:
    """Run one case, write its mask (and panel), return its metrics row."""
    result = pipe.run(case.image)
    gt = reference(case, result.image, mask_labels)
    pred = result.mask > 0
    write_mask(pred, out_dir / "masks" / f"{case.stem}.png", like=result.image)
    row: dict[str, Any] = {"stem": case.stem, **segmentation_metrics(pred, gt),
                           **emptiness(pred, gt)}
    coarse = pred
    if result.uncertainty is not None:
        # the coarse side gets the same post-processing, so both columns are pipeline outputs
        coarse = postprocess(result.coarse_probs, pipe.post, spacing=result.image.spacing) > 0
        row.update({f"coarse_{k}": v for k, v in segmentation_metrics(coarse, gt).items()})
        row["review_score"] = result.review_score
        pixels.add(result.uncertainty, pred != gt)
    row["seconds"] = result.timings.get("total", math.nan)
    row.update(class_rows(result, case, classes or []))
    if panel:
        write_panel(result, coarse, pred, gt, out_dir / "panels" / f"{case.stem}.png")
    return row


def class_names(pipe: SegmentationPipeline | None) -> list[str]:
    """The class names of a multi-class coarse model (as its weights store them); [] else."""
    if pipe is None or pipe.coarse is None or pipe.coarse.model_cfg.num_classes == 1:
        return []
    n = pipe.coarse.model_cfg.num_classes
    names = list(pipe.coarse.info.get("class_names") or [])
    return names if len(names) == n else [f"class{c}" for c in range(1, n + 1)]


def class_rows(result, case: Pair, classes: list[str]) -> dict[str, Any]:
    """Per-class metrics of a run's label map against the case's label map (label c =
    class c, as in ``--mask-dir masks_multiclass``)."""
    if not classes:
        return {}
    gt = reference_labels(case, result.image)
    scores = per_class_metrics(result.mask, gt, range(1, len(classes) + 1))
    return {f"{classes[c - 1]}_{k}": v for c, m in scores.items() for k, v in m.items()}


def mask_index(pred_dir: Path) -> dict[str, Path]:
    """{stem: mask file} of a folder, listed once (``a.nii.gz`` has stem ``a``)."""
    index: dict[str, Path] = {}
    for path in sorted(p for p in pred_dir.iterdir() if p.is_file()):
        index.setdefault(stem_of(path), path)
    return index


def score_case(case: Pair, mask_path: Path | None, pred_dir: Path,
               mask_labels: tuple[int, ...] = ()) -> dict[str, Any]:
    """Metrics of an existing mask (any mask format) against the truth."""
    if mask_path is None:
        raise InputError(f"{pred_dir}: no mask named {case.stem}.* for case {case.stem}")
    image = read_image(case.image)  # the geometry the masks are checked against
    pred = read_mask(mask_path, like=image) > 0
    gt = reference(case, image, mask_labels)
    return {"stem": case.stem, **segmentation_metrics(pred, gt), **emptiness(pred, gt),
            "seconds": math.nan}


def emptiness(pred: np.ndarray, gt: np.ndarray) -> dict[str, int]:
    """Whether the reference and the prediction are empty (images without a lesion, such as
    normal breast-ultrasound frames: an empty prediction there is right, and Dice is 1)."""
    return {"reference_empty": int(not gt.any()), "pred_empty": int(not pred.any())}


def write_panel(result, coarse: np.ndarray, pred: np.ndarray, gt: np.ndarray, path: Path) -> None:
    from medrefine.visualize import comparison_panel, save_png, uncertainty_heatmap

    image01 = display_image01(result)
    panels: dict[str, np.ndarray] = {"coarse": coarse}
    if result.uncertainty is not None:
        panels["refined"] = pred
    panels["ground truth"] = gt
    if result.uncertainty is not None:
        panels["uncertainty"] = uncertainty_heatmap(result.uncertainty, image01, vmax=1.0)
    save_png(comparison_panel(image01, panels), path)


class PixelSample:
    """A bounded random sample of (uncertainty, pixel is wrong) pairs, a fixed number per image
    drawn with one seeded generator, so the AUROC is reproducible and memory stays small."""

    def __init__(self, per_image: int, seed: int):
        self.per_image = per_image
        self.rng = np.random.default_rng(seed)
        self.scores: list[np.ndarray] = []
        self.wrong: list[np.ndarray] = []

    def add(self, uncertainty: np.ndarray, wrong: np.ndarray) -> None:
        flat_u, flat_w = uncertainty.reshape(-1), wrong.reshape(-1)
        take = self.rng.choice(flat_u.size, size=min(self.per_image, flat_u.size), replace=False)
        self.scores.append(flat_u[take].astype(np.float32))
        self.wrong.append(flat_w[take])

    def auroc(self) -> dict[str, float]:
        if not self.scores:
            return {"auroc": math.nan, "pixels": 0, "wrong_pixels": 0}
        scores, wrong = np.concatenate(self.scores), np.concatenate(self.wrong)
        return {
            "auroc": auroc(scores, wrong),
            "pixels": int(scores.size),
            "wrong_pixels": int(wrong.sum()),
            "per_image": self.per_image,
            "seed": AUROC_SEED,
        }


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve by the Mann-Whitney rank formula (ties get average ranks):
    AUC = (R+ - n+(n+ + 1)/2) / (n+ n-), R+ the rank sum of the positives (Hanley & McNeil,
    Radiology 1982). NaN when either class is absent."""
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    n_neg = int(positive.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = stats.rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def spearman(x: list[float], y: list[float]) -> dict[str, float]:
    """Spearman's rho with its p-value; NaN when undefined (n < 3 or a constant side)."""
    pairs = [(a, b) for a, b in zip(x, y, strict=True) if np.isfinite(a) and np.isfinite(b)]
    if len(pairs) < 3:
        return {"rho": math.nan, "p": math.nan, "n": len(pairs)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        res = stats.spearmanr([a for a, _ in pairs], [b for _, b in pairs])
    return {"rho": float(res.statistic), "p": float(res.pvalue), "n": len(pairs)}


def build_summary(
    rows: list[dict[str, Any]], refining: bool, pixels: PixelSample, label: str = "coarse"
) -> dict[str, Any]:
    """``label`` names the scores when there is no refinement: ``coarse`` (a model's masks
    with --no-refine) or ``masks`` (existing masks scored with --pred)."""
    final = summarize([{m: r[m] for m in METRICS} for r in rows])
    summary: dict[str, Any] = {
        "refinement": refining,
        "distances": "pixels",
        "std": "population (ddof=0)",
    }
    empty = [r for r in rows if r.get("reference_empty")]
    if empty:  # some images have nothing to find: score them apart as well
        summary["empty_references"] = {
            "n": len(empty),
            "left_empty": sum(r["pred_empty"] for r in empty),
            "fraction_left_empty": sum(r["pred_empty"] for r in empty) / len(empty),
            "dice_on_the_others": summarize(
                [{"dice": r["dice"]} for r in rows if not r.get("reference_empty")]
            ).get("dice"),
        }
    if not refining:
        summary.update({label: final, "refined": None})
        return summary
    summary["refined"] = final
    summary["coarse"] = summarize([{m: r[f"coarse_{m}"] for m in METRICS} for r in rows])
    summary["coarse_note"] = (
        "coarse model probabilities with the same post-processing (what --no-refine writes)"
    )
    summary["review_score_vs_error"] = spearman(
        [r["review_score"] for r in rows], [1.0 - r["dice"] for r in rows]
    )
    summary["uncertainty_auroc"] = pixels.auroc()
    summary["seconds_per_image"] = summarize([{"s": r["seconds"]} for r in rows]).get("s")
    return summary


def format_table(summary: dict[str, Any]) -> str:
    """The printed summary: n, mean ± std of Dice, IoU, HD95, ASSD, BF for coarse and refined."""
    head = [
        ("Dice", "dice", 3),
        ("IoU", "iou", 3),
        ("HD95 px", "hd95", 1),
        ("ASSD px", "assd", 1),
        ("BF", "bf_score", 3),
    ]
    lines = [
        f"{summary['data_dir']}  split={summary['split']}  n={summary['n']}"
        + (f"  ({summary['n_failed']} failed)" if summary["n_failed"] else "")
    ]
    lines.append(f"{'':<9}" + "".join(f"{title:>17}" for title, _, _ in head))
    undefined = []
    for name in ("masks", "coarse", "refined"):
        stats_ = summary.get(name)
        if not stats_:
            continue
        cells = []
        for _, key, digits in head:
            s = stats_.get(key, {})
            mean, std = s.get("mean", math.nan), s.get("std", math.nan)
            cells.append(f"{mean:.{digits}f} ± {std:.{digits}f}")
            if key == "hd95" and s.get("n_undefined"):
                undefined.append(f"{name} {int(s['n_undefined'])}")
        lines.append(f"{name:<9}" + "".join(f"{c:>17}" for c in cells))
    for name, stats_ in (summary.get("per_class") or {}).items():
        cells = [
            f"{stats_.get(key, {}).get('mean', math.nan):.{digits}f} ± "
            f"{stats_.get(key, {}).get('std', math.nan):.{digits}f}"
            for _, key, digits in head
        ]
        lines.append(f"{name:<9}" + "".join(f"{c:>17}" for c in cells))
    if summary.get("per_class"):
        lines.append("multi-class: the first rows score the union of the classes, then each class")
    lines.append("mean ± std over images; BF = boundary F1 at 2 px")
    if undefined:
        lines.append("HD95/ASSD left out where one mask is empty: " + ", ".join(undefined))
    if summary.get("empty_references"):
        e = summary["empty_references"]
        others = e["dice_on_the_others"] or {}
        lines.append(
            f"empty references: {e['left_empty']}/{e['n']} left empty "
            f"({100 * e['fraction_left_empty']:.1f}%); the rows above count each as Dice 1 "
            f"when left empty, else 0; Dice on the {int(others.get('n', 0))} others "
            f"{others.get('mean', math.nan):.3f} ± {others.get('std', math.nan):.3f}"
        )
    if summary.get("refinement"):
        sp, au = summary["review_score_vs_error"], summary["uncertainty_auroc"]
        lines.append(
            f"review score vs 1 - Dice: Spearman rho = {sp['rho']:.3f} "
            f"(p = {sp['p']:.2g}, n = {sp['n']})"
        )
        lines.append(
            f"uncertainty AUROC for wrong pixels: {au['auroc']:.3f} "
            f"({au['pixels']:,} pixels sampled, {au['wrong_pixels']:,} wrong)"
        )
    return "\n".join(lines)


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return "" if value is None else value
