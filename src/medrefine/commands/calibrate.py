"""``medrefine calibrate``: choose a refiner's defaults on a val split (never on test).

Refines, for each val image, the inputs ``--kinds`` (the coarse model's mask, a jittered box
per object, a rough outline, a low-resolution and a shifted mask) at every strength of
``--strengths`` and steps of ``--steps``, then stores in the weights: the steps, the
``strength="auto"`` table (probe disagreement -> strength, or keep the input), and the
leave-alone threshold chosen on the val images and their colour/contrast/blur-shifted copies.
``medrefine train --stage refiner`` does this at the end of training; this command does it
again for a refiner on your own data, or with other input kinds (e.g. only ``coarse`` for a
refiner that only ever sees its own coarse model's masks).

example:
  medrefine calibrate --weights runs/refiner/best.safetensors --coarse-weights c.safetensors \\
      --data my_data -o refiner_calibrated.safetensors
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medrefine.commands.options import add_device_option


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from medrefine.training.calibrate import VAL_KINDS

    p = sub.add_parser("calibrate", help="choose a refiner's defaults on a val split",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=Path, required=True, help="refiner weights")
    p.add_argument("--coarse-weights", type=Path, nargs="+", required=True,
                   help="the coarse model whose masks are the 'coarse' inputs (several files "
                   "of one kind: their ensemble, as a preset with coarse_2.safetensors runs)")
    p.add_argument("--data", type=Path, required=True, help="folder with images/, masks/")
    p.add_argument("--split", default="val", choices=["train", "val"],
                   help="split to calibrate on (default val; test is never used)")
    p.add_argument("--kinds", nargs="+", choices=VAL_KINDS, default=list(VAL_KINDS))
    p.add_argument("--strengths", nargs="+", type=float, default=[0.1, 0.3, 0.5, 0.7])
    p.add_argument("--steps", nargs="+", type=int, default=[2, 4])
    p.add_argument("--max-cases", type=int, default=40, help="val images used (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--own-coarse", action="store_true",
                   help="calibrate only what `segment` uses on the coarse model's own masks "
                   "(inputs: coarse; steps: the weights' default); the table for given "
                   "masks and boxes stays")
    p.add_argument("-o", "--out", type=Path, required=True, help="calibrated weights file")
    add_device_option(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from medrefine.errors import ConfigError
    from medrefine.inference import coarse_from_weights
    from medrefine.refine import RefineParams
    from medrefine.training.calibrate import ValSet, calibrate_weights
    from medrefine.training.data import find_pairs, split_pairs

    if not all(0 < s <= 1 for s in args.strengths) or min(args.steps) < 1:
        raise ConfigError("--strengths must lie in (0, 1] and --steps be >= 1")
    coarse = coarse_from_weights(args.coarse_weights, args.device)
    pairs = split_pairs(args.data, find_pairs(args.data), args.seed)[args.split]
    if args.max_cases:
        pairs = pairs[:args.max_cases]
    if not pairs:
        raise ConfigError(f"{args.data}: the {args.split} split is empty")
    kinds = ("coarse",) if args.own_coarse else tuple(args.kinds)
    val = ValSet(coarse, pairs, kinds, args.seed, shifts=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = calibrate_weights(args.weights, val, RefineParams(steps=min(args.steps)),
                               tuple(args.strengths), tuple(args.steps), args.device, args.out,
                               own=args.own_coarse)
    print(json.dumps({"steps": report["steps"], "auto": report["auto"],
                      "per_kind": {k: {"input": round(v["input"], 4), "auto": round(v["auto"], 4),
                                       "best_fixed": round(v["best_fixed"], 4)}
                                   for k, v in report["per_kind"].items()},
                      "gate": report["gate"]}, indent=2))
    print(f"calibrated weights: {args.out}")
    return 0
