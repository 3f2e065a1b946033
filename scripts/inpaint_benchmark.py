"""Inpainting quality on chest X-rays: medrefine's diffusion inpainting against OpenCV Telea,
OpenCV Navier-Stokes and scikit-image biharmonic, side by side in one run.

On a split of covid_cxr_lungs_v7 (test for the reported figures, val to choose settings), each
image gets seeded synthetic masks of three kinds (``medrefine.inpaint.masks``): rib-like bands
over both lung fields, free-form strokes, one box of 15-25% of each side. Every method fills the
same masks at the image's own size (8-bit, as stored); scores: PSNR over the masked pixels and
SSIM over the mask's bounding box (``medrefine.metrics``), both on [0, 1].

  python scripts/inpaint_benchmark.py --split test --out eval/inpaint_test \\
      --sweep 10 --figure docs/inpaint_examples.png
  python scripts/inpaint_benchmark.py --split val --out eval/inpaint_val --blends

Prints markdown tables and writes OUT/results.json (per image, kind and method)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
from skimage.restoration import inpaint_biharmonic

from medrefine.inpaint import masks as M
from medrefine.inpaint.blend import blend
from medrefine.inpaint.pipeline import InpaintingPipeline
from medrefine.io import read_image
from medrefine.metrics import psnr, ssim
from medrefine.training.data import find_pairs, split_pairs

KINDS = ("ribs", "strokes", "box")
CLASSICAL = ("telea", "navier_stokes", "biharmonic")


def classical(method: str, image8: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """A classical fill as float [0, 1]."""
    if method == "telea":
        return cv2.inpaint(image8, hole, 5, cv2.INPAINT_TELEA).astype(np.float32) / 255
    if method == "navier_stokes":
        return cv2.inpaint(image8, hole, 5, cv2.INPAINT_NS).astype(np.float32) / 255
    if method == "biharmonic":
        return inpaint_biharmonic(image8.astype(np.float64) / 255, hole.astype(bool)
                                  ).astype(np.float32)
    raise ValueError(method)


def scores(pred01: np.ndarray, true01: np.ndarray, hole: np.ndarray) -> dict[str, float]:
    ys, xs = np.nonzero(hole)
    y0, y1 = max(0, ys.min() - 3), ys.max() + 4  # the box, with SSIM's window margin
    x0, x1 = max(0, xs.min() - 3), xs.max() + 4
    return {"psnr": psnr(pred01[hole > 0], true01[hole > 0]),
            "ssim": ssim(pred01[y0:y1, x0:x1], true01[y0:y1, x0:x1])}


def case_mask(kind: str, shape, seed: int, index: int) -> np.ndarray:
    rng = np.random.default_rng([seed, index, KINDS.index(kind)])
    return M.make_mask(kind, shape, rng)


def load_cases(data: str, split: str, limit: int | None):
    pairs = split_pairs(data, find_pairs(data), 0)[split][:limit]
    return [(p.stem, np.round(read_image(p.image).array[0]).astype(np.uint8)) for p in pairs]


def main_table(pipe, cases, seed: int, methods, blends: bool) -> list[dict]:
    rows = []
    for i, (stem, image8) in enumerate(cases):
        true01 = image8.astype(np.float32) / 255
        for kind in KINDS:
            hole = case_mask(kind, image8.shape, seed, i)
            for method in methods:
                t = time.perf_counter()
                if method == "ours":
                    out01 = pipe.run(image8, hole).inpainted.astype(np.float32) / 255
                else:
                    out01 = classical(method, image8, hole)
                sec = time.perf_counter() - t
                rows.append({"stem": stem, "kind": kind, "method": method, "seconds": sec,
                             **scores(out01, true01, hole)})
                if method == "ours" and blends:  # the same fill, other seams
                    for mode in ("feather", "poisson"):
                        mixed = blend(true01, out01, hole, mode)
                        rows.append({"stem": stem, "kind": kind, "method": f"ours_{mode}",
                                     "seconds": sec, **scores(mixed, true01, hole)})
        print(f"  {i + 1}/{len(cases)} {stem}", flush=True)
    return rows


def summarize(rows, methods) -> dict:
    out = {}
    for kind in KINDS:
        for method in methods:
            sel = [r for r in rows if r["kind"] == kind and r["method"] == method]
            if sel:
                out[f"{kind}/{method}"] = {
                    k: float(np.mean([r[k] for r in sel])) for k in ("psnr", "ssim", "seconds")}
                out[f"{kind}/{method}"]["n"] = len(sel)
    return out


def print_table(summary, methods) -> None:
    print("\n| mask kind | " + " | ".join(methods) + " |")
    print("|---|" + "---|" * len(methods))
    for kind in KINDS:
        cells = []
        for m in methods:
            s = summary.get(f"{kind}/{m}")
            cells.append(f"{s['psnr']:.2f} dB / {s['ssim']:.4f}" if s else "-")
        print(f"| {kind} | " + " | ".join(cells) + " |")
    print("(PSNR over the masked pixels / SSIM over the mask's bounding box; mean per image)")
    print("\nmean seconds per image: " + ", ".join(
        f"{m} {np.mean([summary[f'{k}/{m}']['seconds'] for k in KINDS]):.2f}"
        for m in methods if f"ribs/{m}" in summary))
    if "biharmonic" in methods:
        print("\nours minus the best classical (PSNR dB / SSIM):")
        for kind in KINDS:
            best = max(CLASSICAL, key=lambda m: summary[f"{kind}/{m}"]["psnr"])
            best_ssim = max(summary[f"{kind}/{m}"]["ssim"] for m in CLASSICAL)
            ours = summary[f"{kind}/ours"]
            print(f"  {kind}: {ours['psnr'] - summary[f'{kind}/{best}']['psnr']:+.2f} dB "
                  f"(vs {best}), SSIM {ours['ssim'] - best_ssim:+.4f}")


def sweep(weights, cases, seed: int, steps_grid, samples_grid, blend: str) -> list[dict]:
    rows = []
    for steps in steps_grid:
        for samples in samples_grid:
            pipe = InpaintingPipeline(weights=weights, steps=steps, samples=samples, seed=0,
                                      blend=blend)
            vals, secs = [], []
            for i, (_, image8) in enumerate(cases):
                true01 = image8.astype(np.float32) / 255
                for kind in KINDS:
                    hole = case_mask(kind, image8.shape, seed, i)
                    t = time.perf_counter()
                    out01 = pipe.run(image8, hole).inpainted.astype(np.float32) / 255
                    secs.append(time.perf_counter() - t)
                    vals.append(scores(out01, true01, hole)["psnr"])
            rows.append({"steps": steps, "samples": samples, "psnr": float(np.mean(vals)),
                         "seconds": float(np.mean(secs)), "n": len(vals)})
            print(f"  steps {steps} samples {samples}: {rows[-1]['psnr']:.2f} dB "
                  f"{rows[-1]['seconds']:.2f} s", flush=True)
    print("\n| steps \\ samples | " + " | ".join(map(str, samples_grid)) + " |")
    print("|---|" + "---|" * len(samples_grid))
    for steps in steps_grid:
        cells = [f"{r['psnr']:.2f} dB, {r['seconds']:.2f} s" for r in rows if r["steps"] == steps]
        print(f"| {steps} | " + " | ".join(cells) + " |")
    return rows


def write_defaults(src: Path, dst: Path, defaults: dict) -> None:
    """The same tensors, with ``defaults`` as the sampling defaults stored in the config."""
    from medrefine.checkpoint import load_state, read_info, save_weights
    from medrefine.inpaint.model import InpaintModelConfig, build_model

    info = read_info(src)
    info["model"]["defaults"] = defaults
    InpaintModelConfig.from_dict(info["model"])  # checked before anything is written
    model = build_model(InpaintModelConfig.from_dict(info["model"]))
    model.load_state_dict(load_state(src))
    info["defaults_chosen_on"] = "val sweep (scripts/inpaint_benchmark.py --choose-defaults)"
    save_weights(dst, model, info)


def figure(pipe, data: str, cases, seed: int, path: Path, tile: int = 256) -> None:
    """Rows: a rib-band, a stroke and a box case, then a real device removal (the device's
    own outline from masks_multiclass label 2, dilated 4 px); columns: before, mask,
    biharmonic, ours."""
    from medrefine.visualize import comparison_panel, save_png

    def small(a):
        return cv2.resize(a, (tile, tile), interpolation=cv2.INTER_AREA)

    def rgb(a01):
        return np.repeat((np.clip(a01, 0, 1) * 255).round().astype(np.uint8)[..., None], 3, 2)

    picks = [(cases[j % len(cases)], kind, j) for j, kind in zip((0, 1, 2), KINDS, strict=True)]
    rows_img = []
    for (_stem, image8), kind, j in picks:
        rows_img.append((image8, case_mask(kind, image8.shape, seed, j), kind))
    for p in split_pairs(data, find_pairs(data, "masks_multiclass"), 0)["test"]:
        labels = np.round(read_image(p.mask).array[0]).astype(np.uint8)
        if (labels == 2).sum() > 200:
            hole = cv2.dilate((labels == 2).astype(np.uint8), np.ones((9, 9), np.uint8))
            image8 = np.round(read_image(p.image).array[0]).astype(np.uint8)
            rows_img.append((image8, hole, "device"))
            break
    panels = []
    for image8, hole, kind in rows_img:
        ours = pipe.run(image8, hole).inpainted.astype(np.float32) / 255
        bih = classical("biharmonic", image8, hole)
        before = small(image8.astype(np.float32) / 255)
        panels.append(comparison_panel(
            before, {f"mask ({kind})": small(hole.astype(np.uint8)) > 0,
                     "biharmonic": rgb(small(bih)), "ours (synthetic)": rgb(small(ours))},
            image_title="before", title_height=20))
    save_png(np.concatenate(panels, 0), path)
    print(f"figure: {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/covid_cxr_lungs_v7")
    ap.add_argument("--split", default="test", choices=("train", "val", "test"))
    ap.add_argument("--weights", help="inpainting weights (default: the shipped preset)")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--samples", type=int)
    ap.add_argument("--blend", choices=("hard", "feather", "poisson"))
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--limit", type=int, help="first N cases only")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--blends", action="store_true", help="also hard/feather/poisson seams")
    ap.add_argument("--sweep", type=int, default=0, help="steps x samples on the first N cases")
    ap.add_argument("--figure", type=Path, help="write the example figure here")
    ap.add_argument("--ours-only", action="store_true", help="leave out the classical methods")
    ap.add_argument("--choose-defaults", type=Path, metavar="OUT.safetensors",
                    help="val only, with --sweep: write the weights again with the sweep's best "
                         "steps x samples (within --max-seconds per image) and the --blend as "
                         "their stored defaults")
    ap.add_argument("--max-seconds", type=float, default=2.0,
                    help="--choose-defaults: slowest mean seconds per image allowed (2.0)")
    args = ap.parse_args()
    if args.choose_defaults and (args.split != "val" or not args.sweep):
        ap.error("--choose-defaults needs --split val and --sweep N (defaults are chosen on val)")

    cases = load_cases(args.data, args.split, args.limit)
    pipe = InpaintingPipeline(weights=args.weights, steps=args.steps, samples=args.samples,
                              blend="hard" if args.blends else args.blend, seed=0)
    methods = ["ours"] if args.ours_only else [*CLASSICAL, "ours"]
    print(f"{len(cases)} {args.split} images x {len(KINDS)} mask kinds; ours: {pipe.params()}")
    rows = main_table(pipe, cases, args.seed, methods, args.blends)
    shown = methods + (["ours_feather", "ours_poisson"] if args.blends else [])
    summary = summarize(rows, shown)
    print_table(summary, shown)
    result = {"split": args.split, "data": args.data, "seed": args.seed, "n": len(cases),
              "ours": pipe.params(), "weights": str(pipe.weights), "summary": summary,
              "rows": rows}
    if args.sweep:
        result["sweep"] = sweep(pipe.weights, cases[: args.sweep], args.seed, (1, 2, 4),
                                (1, 2, 4), pipe.blend)
    if args.choose_defaults:
        fits = [r for r in result["sweep"] if r["seconds"] <= args.max_seconds]
        best = max(fits or result["sweep"], key=lambda r: r["psnr"])
        defaults = {"steps": best["steps"], "samples": best["samples"], "blend": pipe.blend,
                    "eta": pipe.eta}
        write_defaults(pipe.weights, args.choose_defaults, defaults)
        result["chosen_defaults"] = defaults
        print(f"defaults {defaults} -> {args.choose_defaults}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=1))
    if args.figure:
        figure(pipe, args.data, cases, args.seed, args.figure)


if __name__ == "__main__":
    main()
