"""Infection and lung Dice of a CT slice model, pooled per volume (the ct-lung-infection bar).

Slice-wise means (what ``medrefine evaluate`` prints) weigh a slice with a speck of infection
as much as one full of it; the field's CT infection figures pool each volume's voxels, then
average the volumes. This runs the model on every slice of a split, accumulates per volume the
overlap and sizes of the infection label and of the lungs (any label), and prints both:

  volume                     slices  infection Dice (pooled)  lungs Dice (pooled)
  g06_coronacases_vol07 ...

Volumes are the manifest's ``grouping.groups`` (name -> [first stem, last stem, n]); a data set
without them (medseg_covid_ct_infnet: slices of >40 patients) is pooled as one. The reference
is a layered ``--mask-dir`` (``masks_lung+masks``: 1 lung, 2 infection) or a label map whose
non-zero labels are infection (``--infection-labels 1 2`` for MedSeg's ground-glass and
consolidation; that set has no lung masks, so its lung column is left out).

usage:
  OMP_NUM_THREADS=2 python scripts/ct_infection_eval.py --preset ct-lung-infection \\
      --data ../shared/data/covid_ct_lung_infection_ma --mask-dir masks_lung+masks --split test
  OMP_NUM_THREADS=2 python scripts/ct_infection_eval.py --preset ct-lung-infection \\
      --data ../shared/data/medseg_covid_ct_infnet --infection-labels 1 2 --split test
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from medrefine.pipeline import SegmentationPipeline
from medrefine.training.data import find_pairs, reference_labels, split_pairs


def volume_of(manifest: dict) -> Callable[[str], str]:
    """stem -> volume name, from the manifest's stem ranges (one volume without them)."""
    groups = (manifest.get("grouping") or {}).get("groups") if isinstance(
        manifest.get("grouping"), dict) else None
    if not groups:
        return lambda stem: "all slices"
    ranges = [(first, last, name) for name, (first, last, *_rest) in groups.items()]

    def find(stem: str) -> str:
        for first, last, name in ranges:
            if first <= stem <= last:
                return name
        return "ungrouped"

    return find


def pooled_dice(inter: float, a: float, b: float) -> float:
    return 1.0 if a + b == 0 else 2.0 * inter / (a + b)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset")
    ap.add_argument("--weights", type=Path, nargs="+",
                    help="a coarse model instead of the preset's (several: their ensemble)")
    ap.add_argument("--tta", help="test-time flips (hflip, vflip, hflip,vflip; default none)")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--split", default="test", choices=("train", "val", "test"))
    ap.add_argument("--mask-dir", default="masks")
    ap.add_argument("--infection-labels", type=int, nargs="+", default=(2,),
                    help="reference labels that are infection (default 2)")
    ap.add_argument("--pred-label", type=int, default=2, help="the model's infection label")
    ap.add_argument("--json", type=Path, help="also write the table as JSON here")
    args = ap.parse_args(argv)

    pipe = SegmentationPipeline(cpunet_weights=args.weights, preset=args.preset,
                                use_diffusion=False, tta=args.tta)
    manifest_path = args.data / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    volume = volume_of(manifest)
    cases = split_pairs(args.data, find_pairs(args.data, args.mask_dir))[args.split]
    has_lungs = "+" in args.mask_dir
    sums: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(7))
    slice_dice = []
    t0 = time.perf_counter()
    for case in cases:
        result = pipe.run(case.image)
        labels = np.asarray(result.mask)
        truth = reference_labels(case, result.image)
        p_inf, t_inf = labels == args.pred_label, np.isin(truth, args.infection_labels)
        p_lung, t_lung = labels > 0, truth > 0
        s = sums[volume(case.stem)]
        s += [1, (p_inf & t_inf).sum(), p_inf.sum(), t_inf.sum(),
              (p_lung & t_lung).sum(), p_lung.sum(), t_lung.sum()]
        if t_inf.any():
            slice_dice.append(pooled_dice((p_inf & t_inf).sum(), p_inf.sum(), t_inf.sum()))
    seconds = time.perf_counter() - t0
    rows = []
    for name in sorted(sums):
        n, ii, pi, ti, il, pl, tl = sums[name]
        rows.append({"volume": name, "slices": int(n), "infection_dice": pooled_dice(ii, pi, ti),
                     "lungs_dice": pooled_dice(il, pl, tl) if has_lungs else None})
    print(f"{args.data.name} {args.split}: {len(cases)} slices, {len(rows)} volumes, "
          f"{1000 * seconds / max(1, len(cases)):.0f} ms per slice")
    print(f"{'volume':34s} {'slices':>6s} {'infection Dice':>15s} {'lungs Dice':>11s}")
    for r in rows:
        lungs = f"{r['lungs_dice']:.3f}" if r["lungs_dice"] is not None else "-"
        print(f"{r['volume']:34s} {r['slices']:6d} {r['infection_dice']:15.3f} {lungs:>11s}")
    inf = float(np.mean([r["infection_dice"] for r in rows]))
    lungs = float(np.mean([r["lungs_dice"] for r in rows])) if has_lungs else None
    print(f"{'mean over volumes':34s} {'':6s} {inf:15.3f} "
          f"{(f'{lungs:.3f}' if lungs is not None else '-'):>11s}")
    print(f"slice-wise infection Dice (slices with infection): {np.mean(slice_dice):.3f} "
          f"(n={len(slice_dice)})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"data": str(args.data), "split": args.split,
                                         "volumes": rows, "infection_dice_mean": inf,
                                         "lungs_dice_mean": lungs,
                                         "slice_infection_dice": float(np.mean(slice_dice))},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
