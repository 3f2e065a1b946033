"""Validation inputs for the refiner, and the calibration of its defaults on them.

The refiner is judged on every kind of mask a user brings, so validation refines, for each val
image, several inputs made reproducibly from it (``VAL_KINDS``): the coarse model's mask, a box
per object jittered by up to 5% of its size, a rough outline, a low-resolution mask and a
shifted one, and a near-perfect one (the truth with its boundary moved by a pixel or two, as
the strongest tools give: its best correction is none). After training, ``calibrate`` chooses on
val (never on test), loss-averse: a Dice point lost on an input counts ``HARM_WEIGHT`` times a
point gained, and ties go to leaving the input alone, so the refiner changes a mask only where
val says it pays clearly (a refiner that never makes a good mask worse):

1. the number of steps, and for ``strength="auto"`` the table from the probe's disagreement
   (1 - Dice between the input and the refiner's first x0 estimate) to a strength: the
   disagreements are cut at their quartiles and each bin takes the fixed strength with the best
   loss-averse utility in it, or 0 (keep the input) where the inputs in the bin are better as
   they are (a bin keeps the strength best over all inputs unless its own gains ``MIN_GAIN``);
   boxes count by their Dice gain, at the probe's strength in a bin that keeps masks (a box is
   never the answer, so it is refined there all the same);
2. ``max_doubt``: refined masks whose review score exceeds it are left as the input was (any
   quantile of the val doubts, from leaving nearly all alone to none). Chosen
   to maximise the loss-averse utility over the non-box inputs on the val images and on the
   same images with
   their colour, contrast and sharpness shifted (the look of another hospital's device), where
   a refiner is most likely to be wrong with confidence.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from medrefine.checkpoint import read_info, save_weights
from medrefine.inference import CoarseSegmenter
from medrefine.io import read_image
from medrefine.metrics import dice
from medrefine.preprocess import from_grid
from medrefine.prompts import jitter_box, mask_boxes
from medrefine.refine import AutoStrength, RefineParams, Refiner
from medrefine.training.data import read_label_map
from medrefine.training.mask_sources import lowres_mask, outline_mask, shift_mask

logger = logging.getLogger(__name__)

VAL_KINDS = ("coarse", "box", "outline", "lowres", "shift", "near")
PROMPT_KINDS = ("box",)  # inputs that are never the answer: no leave-alone for them
MIN_GAIN = 0.002  # Dice a disagreement bin must gain to get a strength of its own
HARM_WEIGHT = 3.0  # a Dice point lost on an input weighs as much as this many points gained
SHIFTS = ("colour", "contrast", "blur")


def val_box(gt: np.ndarray, rng: np.random.Generator, jitter: float = 0.05) -> np.ndarray:
    """One box per object, each side moved by up to ``jitter`` of the box's size."""
    out = np.zeros_like(gt)
    for box in mask_boxes(gt):
        x0, y0, x1, y1 = jitter_box(box, jitter, rng)
        out[max(0, round(y0)):max(0, round(y1)), max(0, round(x0)):max(0, round(x1))] = 1
    return out


def near_mask(gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The truth as a strong tool draws it: its boundary moved in or out by 1-2 px in places
    (a smooth random field decides where), so its best correction is none or nearly so."""
    radius = int(rng.integers(1, 3))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    grown, shrunk = cv2.dilate(gt, kernel), cv2.erode(gt, kernel)
    field = cv2.GaussianBlur(rng.standard_normal(gt.shape).astype(np.float32), (0, 0),
                             max(gt.shape) / 16)
    return np.where(field > 0, grown, shrunk).astype(gt.dtype)


def utility(refined: np.ndarray, given: np.ndarray) -> float:
    """Mean loss-averse gain of ``refined`` Dice over ``given`` Dice (arrays per input)."""
    delta = np.asarray(refined, dtype=np.float64) - np.asarray(given, dtype=np.float64)
    return float(np.mean(np.maximum(delta, 0.0) - HARM_WEIGHT * np.maximum(-delta, 0.0)))


def shift_image(image01: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """(C, H, W) in [0, 1] -> the same image as another device might show it."""
    if kind == "colour":
        gains = rng.uniform(0.75, 1.25, (image01.shape[0], 1, 1)) if image01.shape[0] > 1 else \
            np.array([[[rng.uniform(0.75, 1.25)]]])
        out = image01 * gains.astype(np.float32) + rng.uniform(-0.08, 0.08)
    elif kind == "contrast":
        gamma = rng.choice([rng.uniform(0.55, 0.8), rng.uniform(1.3, 1.8)])
        out = np.clip(image01, 0, 1) ** gamma
        out = 0.5 + (out - 0.5) * rng.uniform(0.6, 1.2)
    elif kind == "blur":
        sigma = rng.uniform(1.5, 3.0)
        out = np.stack([cv2.GaussianBlur(c, (0, 0), sigma) for c in image01])
    else:
        raise ValueError(kind)
    return np.clip(out, 0, 1).astype(np.float32)


@dataclass
class ValCase:
    image01: np.ndarray  # (C, h, w) on the grid
    inputs: dict[str, np.ndarray]  # kind -> (h, w) input probabilities on the grid
    grid: object
    gt: np.ndarray  # (H, W) bool at the original size
    shifted: dict[str, np.ndarray]  # shift -> (C, h, w) image


class ValSet:
    """Val cases with their inputs made once (the coarse model's runs once per image)."""

    def __init__(self, coarse: CoarseSegmenter, pairs, kinds: tuple[str, ...] = VAL_KINDS,
                 seed: int = 0, shifts: bool = False):
        self.kinds = kinds
        self.cases: list[ValCase] = []
        for index, pair in enumerate(pairs):
            rng = np.random.default_rng([seed, index])
            loaded = read_image(pair.image)
            image01, grid = coarse.prepare(loaded.array, loaded.meta["source_dtype"])
            gt = read_label_map(pair.mask, 1) == 1
            gt_grid = cv2.resize(gt.astype(np.uint8), image01.shape[:0:-1],
                                 interpolation=cv2.INTER_NEAREST)
            inputs = {}
            for kind in kinds:
                if kind == "coarse":
                    inputs[kind] = coarse.predict_grid(image01[None])[0, 0].cpu().numpy()
                else:
                    make = {"box": val_box, "outline": outline_mask, "lowres": lowres_mask,
                            "shift": shift_mask, "near": near_mask}[kind]
                    inputs[kind] = make(gt_grid, rng).astype(np.float32)
            shifted = {s: shift_image(image01, s, rng) for s in SHIFTS} if shifts else {}
            self.cases.append(ValCase(image01, inputs, grid, gt, shifted))

    def dice_of(self, case: ValCase, probs_grid: np.ndarray) -> float:
        return dice(from_grid(probs_grid[None], case.grid)[0] > 0.5, case.gt)

    def score(self, refiner: Refiner | None, params: RefineParams) -> dict[str, list[float]]:
        """kind -> Dice per case (``refiner=None``: the inputs themselves)."""
        out: dict[str, list[float]] = {k: [] for k in self.kinds}
        for case in self.cases:
            for kind, probs in case.inputs.items():
                run = params if kind not in PROMPT_KINDS else replace(params, leave_alone=False)
                if refiner is not None:
                    probs = refiner.refine_grid(case.image01, probs, run).probs
                out[kind].append(self.dice_of(case, probs))
        return out


def calibrate(refiner: Refiner, val: ValSet, base: RefineParams,
              strengths: tuple[float, ...], steps_grid: tuple[int, ...]) -> tuple[
                  RefineParams, AutoStrength, dict]:
    """Choose steps, the auto-strength table and ``max_doubt`` on val (see the module doc)."""
    fixed = replace(base, leave_alone=False)
    # 1. Dice of every input at every fixed strength and steps; the probe's disagreement
    rows = []  # (kind, case index, disagreement, {(steps, strength): dice})
    probe = AutoStrength(probe=refiner.auto.probe)
    refiner.auto = probe
    # a prompt in a "keep" bin is refined at the probe's strength (``Refiner``): scored too
    grid = tuple(sorted({*strengths, probe.probe}))
    for ci, case in enumerate(val.cases):
        for kind, probs in case.inputs.items():
            d = refiner.refine_grid(case.image01, probs,
                                    replace(fixed, strength="auto", steps=1)).disagreement
            scores = {}
            for steps in steps_grid:
                for s in grid:
                    out = refiner.refine_grid(case.image01, probs,
                                              replace(fixed, steps=steps, strength=s))
                    scores[(steps, s)] = val.dice_of(case, out.probs)
            scores[(0, 0.0)] = val.dice_of(case, probs)  # kept as it is
            rows.append((kind, ci, d, scores))
    by_setting = {key: float(np.mean([r[3][key] for r in rows])) for key in rows[0][3]}
    best_steps = max(steps_grid, key=lambda st: (round(max(
        v for (st2, _), v in by_setting.items() if st2 == st), 3), -st))
    keyed = {0.0: (0, 0.0), **{s: (best_steps, s) for s in strengths}}
    ds = np.array([r[2] for r in rows])
    edges = tuple(float(e) for e in np.unique(np.quantile(ds, [0.25, 0.5, 0.75])))
    bins = np.searchsorted(edges, ds, side="right")

    def mean_at(members: list, s: float) -> float:
        """Loss-averse value of strength ``s`` for a bin: masks (which may be the answer)
        by ``utility`` against keeping them, prompts by their mean Dice gain (a prompt is
        never kept: at 0 it is refined at the probe's strength)."""
        value = 0.0
        for r in members:
            kept = r[3][(0, 0.0)]
            if r[0] in PROMPT_KINDS:
                value += r[3][(best_steps, s or probe.probe)] - kept
            else:
                value += utility([r[3][keyed[s]]], [kept])
        return value / len(members)

    # one strength for all, unless a bin gains at least MIN_GAIN with its own (few val images
    # per bin: smaller gains are noise); ties go to the lighter touch
    overall = max(keyed, key=lambda s: (round(mean_at(rows, s), 4), -s))
    table = []
    for b in range(len(edges) + 1):
        members = [r for r, k in zip(rows, bins, strict=True) if k == b]
        best = max(keyed, key=lambda s: (round(mean_at(members, s), 4), -s)) if members else \
            overall
        gain = mean_at(members, best) - mean_at(members, overall) if members else 0.0
        table.append(best if gain >= MIN_GAIN else overall)
    auto = AutoStrength(probe=probe.probe, edges=edges, strengths=tuple(table))
    refiner.auto = auto
    params = replace(base, steps=best_steps, strength="auto", leave_alone=True)
    # 2. max_doubt: on clean and shifted val images, non-prompt inputs
    gate_rows = []  # (doubt, dice refined, dice input)
    for case in val.cases:
        images = [case.image01, *case.shifted.values()]
        for kind, probs in case.inputs.items():
            if kind in PROMPT_KINDS:
                continue
            for image01 in images:
                out = refiner.refine_grid(image01, probs, replace(params, leave_alone=False))
                gate_rows.append((out.doubt, val.dice_of(case, out.probs),
                                  val.dice_of(case, probs)))
    doubts = np.array([g[0] for g in gate_rows])
    candidates = [float("inf"), *np.unique(np.quantile(doubts, np.linspace(0.0, 0.99, 34)))]

    def gated_mean(tau: float) -> float:
        return float(np.mean([r if d <= tau else i for d, r, i in gate_rows]))

    def gated_utility(tau: float) -> float:
        return utility([r if d <= tau else i for d, r, i in gate_rows],
                       [i for _, _, i in gate_rows])

    # ties (to 4 decimals) go to the lower threshold: leave more inputs alone
    max_doubt = max(candidates, key=lambda tau: (round(gated_utility(tau), 4), -tau))
    auto = replace(auto, max_doubt=max_doubt)
    refiner.auto = auto
    # what auto gives per kind, against the best fixed strength for that kind (val)
    report = {"steps": best_steps, "auto": auto.to_dict(), "per_kind": {},
              "disagreement_quartiles": {kind: np.quantile(
                  [r[2] for r in rows if r[0] == kind], [0.25, 0.5, 0.75]).round(4).tolist()
                  for kind in val.kinds}}
    auto_scores = val.score(refiner, params)
    # the strength choice alone, without the leave-alone gate (and without keeping inputs)
    refiner.auto = replace(auto, strengths=tuple(x or auto.probe for x in auto.strengths),
                           max_doubt=float("inf"))
    ungated = val.score(refiner, params)
    refiner.auto = auto
    for kind in val.kinds:
        kind_rows = [r for r in rows if r[0] == kind]
        fixed_means = {s: float(np.mean([r[3][(best_steps, s)] for r in kind_rows]))
                       for s in strengths}
        best_s = max(fixed_means, key=fixed_means.get)
        report["per_kind"][kind] = {
            "input": float(np.mean([val.dice_of(val.cases[r[1]], val.cases[r[1]].inputs[kind])
                                    for r in kind_rows])),
            "auto": float(np.mean(auto_scores[kind])),
            "auto_strength_only": float(np.mean(ungated[kind])),
            "best_fixed": fixed_means[best_s], "best_fixed_strength": best_s,
            "fixed": fixed_means}
    report["gate"] = {"max_doubt": auto.to_dict()["max_doubt"],
                      "mean_dice_ungated": gated_mean(float("inf")),
                      "mean_dice_gated": gated_mean(max_doubt),
                      "utility_ungated": gated_utility(float("inf")),
                      "utility_gated": gated_utility(max_doubt),
                      "harm_weight": HARM_WEIGHT,
                      "left_alone_share": float(np.mean(doubts > max_doubt)),
                      "cases": len(gate_rows)}
    logger.info("calibrated: steps %d, auto %s; per kind %s", best_steps, auto.to_dict(),
                {k: (round(v["auto"], 4), round(v["best_fixed"], 4))
                 for k, v in report["per_kind"].items()})
    return params, auto, report


def calibrate_weights(weights: Path, val: ValSet, base: RefineParams,
                      strengths: tuple[float, ...], steps_grid: tuple[int, ...], device: str,
                      out: Path | None = None, own: bool = False) -> dict:
    """Calibrate a refiner's weights on ``val`` and write them (to ``out``, default in place)
    with the chosen defaults, the auto-strength table and the report; ``calibration.json``
    beside them holds the report too.

    ``own``: calibrate only the auto strength and leave-alone used on the coarse model's own
    masks (``segment``; ``val`` then holds the "coarse" kind only), at the weights' default
    steps; stored beside the table for given masks, which stays."""
    refiner = Refiner.from_weights(weights, device)
    info = read_info(weights)
    if own:
        base, steps_grid = refiner.defaults, (refiner.defaults.steps,)
    params, auto, report = calibrate(refiner, val, base, strengths, steps_grid)
    if own:
        info["auto_strength_own"] = auto.to_dict()
        info.setdefault("training", {})["calibration_own"] = report
    else:
        info["refine_defaults"] = asdict(params)
        info["auto_strength"] = auto.to_dict()
        info.setdefault("training", {})["calibration"] = report
    out = Path(out or weights)
    save_weights(out, refiner.model, info)
    name = "calibration_own.json" if own else "calibration.json"
    (out.parent / name).write_text(json.dumps(report, indent=2))
    return report
