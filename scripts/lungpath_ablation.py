"""The DiffSegLung ablation (issue 13) on the 8-bit CT test splits, hyper-parameters chosen on
the val splits only.

    python scripts/lungpath_ablation.py --stage1 runs/lungpath/stage1.safetensors \
        --stage2 runs/lungpath/stage2.safetensors --out runs/lungpath_ablation

Rows: intensity thresholds (two thresholds, chosen on val); K-means (K=5) on the 34-dim
radiomic descriptors (stride-8 grid, 32-px windows); GMM (K=5) on the stage-1 (diffusion only)
bottleneck features; GMM on the distilled (stage-2) features. Every clustering row goes through
the same pipeline (``LungPathologyPipeline``, rank mode, the data set's lung masks: provided
for covid_ct_lung_infection_ma, the intensity mask for medseg_covid_ct_infnet), the same Sobel
fusion and the same naming rules with their two rank thresholds chosen on val; "oracle" rows
map clusters to classes per slice by the Hungarian matching that maximises Dice with the
ground truth (one cluster per class: healthy, ground-glass, consolidation; the rest healthy).

Dice: pooled over all pixels of the split, and the mean over slices whose ground truth holds
the class ("per slice", Inf-Net's convention). Infection = ground-glass | consolidation.
Cluster maps are cached in OUT/cache_<method>_<dataset>_<split>.npz.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import cv2
import numpy as np

DATASETS = {
    "medseg": "../shared/data/medseg_covid_ct_infnet",
    "ma": "../shared/data/covid_ct_lung_infection_ma",
}
METHODS = ("radiomics_kmeans", "diffusion_gmm", "distilled_gmm")
RANK_GRID = [round(v, 3) for v in np.arange(0.2, 1.0, 0.025)]
INTENSITY_GRID = list(range(20, 256, 8))


def image_of(s):
    from medrefine.io import LoadedImage

    return LoadedImage(
        s.image8[None].astype(np.float32),
        None,
        {"format": "png", "source_dtype": "uint8", "modality": "OT"},
        None,
    )


def radiomic_featurize(stride: int = 8, patch: int = 32):
    from medrefine.lungpath.radiomics import RadiomicsConfig, descriptor_grid

    rcfg = RadiomicsConfig()

    def featurize(x, lung):
        B, H, W = x.shape
        h, w = -(-H // stride), -(-W // stride)
        out = np.zeros((B, rcfg.dim, h, w), np.float32)
        for b in range(B):
            share = cv2.resize(lung[b].astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
            cell = share >= 0.5
            if lung[b].any() and not cell.any():
                cell = share >= share.max()
            iy, ix = np.nonzero(cell)
            centres = np.stack(
                [
                    np.minimum(iy * stride + stride // 2, H - 1),
                    np.minimum(ix * stride + stride // 2, W - 1),
                ],
                1,
            )
            out[b][:, cell] = descriptor_grid(x[b], centres, patch, rcfg).T
        return out

    return featurize


def make_pipeline(method: str, args):
    from medrefine.lungpath.cluster import ClusterConfig
    from medrefine.lungpath.pipeline import InferenceConfig, LungPathologyPipeline

    cfg = InferenceConfig(
        intensity="rank", cluster=ClusterConfig(method="kmeans" if "kmeans" in method else "gmm")
    )
    weights = args.stage1 if method == "diffusion_gmm" else args.stage2
    pipe = LungPathologyPipeline(weights, cfg)
    if method == "radiomics_kmeans":
        pipe.featurize = radiomic_featurize()
    return pipe


def cluster_all(method, name, split, slices, args):
    cache = Path(args.out) / f"cache_{method}_{name}_{split}.npz"
    if cache.is_file():
        data = np.load(cache, allow_pickle=True)
        clusters = [np.asarray(c, np.uint8) for c in data["clusters"]]
        stats = [np.asarray(st, np.float64) for st in data["stats"]]
        return clusters, stats, float(data["seconds"])
    from medrefine.errors import InputError

    pipe = make_pipeline(method, args)
    clusters, stats, t0 = [], [], time.perf_counter()
    for s in slices:
        try:
            r = pipe.run(image_of(s), s.lung)
        except InputError as err:  # refused (e.g. no lung): an empty prediction, counted
            print(f"{name} {split} {s.stem}: {err}", flush=True)
            clusters.append(np.full(s.lung.shape, 255, np.uint8))
            stats.append(np.full((1, 3), np.nan))
            continue
        clusters.append(r.clusters)
        stats.append(np.asarray(r.cluster_stats, np.float64))
    seconds = (time.perf_counter() - t0) / max(1, len(slices))
    np.savez_compressed(
        cache,
        clusters=np.array(clusters, dtype=object),
        stats=np.array(stats, dtype=object),
        seconds=seconds,
    )
    return clusters, stats, seconds


def named(clusters, stats, ggo, cons):
    """Pred map 0 bg/healthy, 1 ground-glass, 2 consolidation from rank naming thresholds."""
    from medrefine.lungpath.naming import NamingConfig, name_clusters

    ncfg = NamingConfig(ground_glass_rank=ggo, consolidation_rank=cons)
    out = []
    for c, st in zip(clusters, stats, strict=True):
        names = name_clusters(st, "rank", ncfg)  # labels 1..5
        lut = np.zeros(256, np.uint8)
        lut[: len(names)] = np.where(names == 3, 1, np.where(names == 4, 2, 0))
        out.append(lut[c])
    return out


def thresholded(slices, t_ggo, t_cons):
    out = []
    for s in slices:
        if not hasattr(s, "blurred"):
            s.blurred = cv2.GaussianBlur(s.image8, (0, 0), 1.0)
        v = s.blurred
        pred = np.where(v >= t_cons, 2, np.where(v >= t_ggo, 1, 0)).astype(np.uint8)
        out.append(np.where(s.lung, pred, 0).astype(np.uint8))
    return out


def oracle(clusters, slices, name):
    """Per slice: Hungarian matching of clusters to (healthy, ground-glass, consolidation)."""
    from scipy.optimize import linear_sum_assignment

    out = []
    for c, s in zip(clusters, slices, strict=True):
        gt = gt_classes(s, name)
        targets = (
            [(s.lung & (gt == 0)), gt == 1, gt == 2]
            if name == "medseg"
            else [(s.lung & (gt == 0)), gt > 0, gt > 0]
        )
        ks = [k for k in range(255) if (c == k).any()]
        cost = np.zeros((len(ks), 3))
        for i, k in enumerate(ks):
            ck = c == k
            for j, t in enumerate(targets):
                cost[i, j] = -dice(ck, t)
        rows, cols = linear_sum_assignment(cost)
        lut = np.zeros(256, np.uint8)
        for r, col in zip(rows, cols, strict=True):
            lut[ks[r]] = [0, 1, 2][col]
        out.append(lut[c])
    return out


def supervised(weights, slices):
    """The project's coarse model (no refinement), its label map (1 ground-glass or
    infection, 2 consolidation)."""
    from medrefine.pipeline import SegmentationPipeline

    pipe = SegmentationPipeline(cpunet_weights=weights, use_diffusion=False)
    return [np.asarray(pipe.run(image_of(s)).mask, np.uint8) for s in slices]


def gt_classes(s, name):
    labels = s.labels
    if name == "ma":
        return (labels > 0).astype(np.uint8)  # infection only
    return labels


def dice(a, b) -> float:
    a, b = a.astype(bool), b.astype(bool)
    den = a.sum() + b.sum()
    return float(2 * (a & b).sum() / den) if den else float("nan")


def scores(preds, slices, name) -> dict:
    """{metric: (pooled, per-slice mean)}."""
    classes = {"medseg": {"ggo": [1], "cons": [2], "inf": [1, 2]}, "ma": {"inf": [1, 2]}}[name]
    out = {}
    for key, vals in classes.items():
        inter = den = 0
        per = []
        for p, s in zip(preds, slices, strict=True):
            gt = gt_classes(s, name)
            g = np.isin(gt, [1] if name == "ma" else vals)
            q = np.isin(p, vals)
            inter += int((g & q).sum())
            den += int(g.sum() + q.sum())
            if g.any():
                per.append(dice(q, g))
        out[key] = (
            2 * inter / den if den else float("nan"),
            float(np.mean(per)) if per else float("nan"),
        )
    return out


def objective(sc, name) -> float:
    return (sc["ggo"][0] + sc["cons"][0]) / 2 if name == "medseg" else sc["inf"][0]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--stage1", required=True)
    ap.add_argument("--stage2", required=True)
    ap.add_argument("--out", default="runs/lungpath_ablation")
    ap.add_argument("--limit", type=int, help="first N slices per split (smoke runs)")
    ap.add_argument(
        "--supervised",
        nargs="*",
        default=[],
        metavar="DATASET=WEIGHTS",
        help="coarse-model weights trained on a data set's train split (medrefine train "
        "--stage coarse), e.g. medseg=runs/x/best.safetensors",
    )
    args = ap.parse_args()
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from medrefine.lungpath.data import load_slices

    Path(args.out).mkdir(parents=True, exist_ok=True)
    results: dict = {}
    for name, folder in DATASETS.items():
        val = load_slices(folder, "val", args.limit)
        test = load_slices(folder, "test", args.limit)
        res = results[name] = {"n_val": len(val), "n_test": len(test)}
        # thresholds on intensity
        best = max(
            (objective(scores(thresholded(val, a, b), val, name), name), a, b)
            for a in INTENSITY_GRID
            for b in INTENSITY_GRID
            if b > a
        )
        res["thresholds"] = {
            "chosen_on_val": {"t_ggo": best[1], "t_cons": best[2], "val_objective": best[0]},
            "test": scores(thresholded(test, best[1], best[2]), test, name),
        }
        for method in METHODS:
            cv, sv, _ = cluster_all(method, name, "val", val, args)
            ct, stt, sec = cluster_all(method, name, "test", test, args)
            best = max(
                (objective(scores(named(cv, sv, a, b), val, name), name), a, b)
                for a in RANK_GRID
                for b in RANK_GRID
                if b >= a
            )
            res[method] = {
                "chosen_on_val": {
                    "ground_glass_rank": best[1],
                    "consolidation_rank": best[2],
                    "val_objective": best[0],
                },
                "test": scores(named(ct, stt, best[1], best[2]), test, name),
                "oracle_test": scores(oracle(ct, test, name), test, name),
                "seconds_per_slice": sec,
            }
        print(f"{name}: done", flush=True)
    for spec in args.supervised:
        name, weights = spec.split("=", 1)
        test = load_slices(DATASETS[name], "test", args.limit)
        results[name]["supervised"] = {
            "weights": weights,
            "test": scores(supervised(weights, test), test, name),
        }
    (Path(args.out) / "ablation.json").write_text(json.dumps(results, indent=2))
    print(table(results))


def table(results) -> str:
    def f(v):
        return "n/a" if v is None or not np.isfinite(v) else f"{v:.3f}"

    rows = [
        ("intensity thresholds", "thresholds", "test"),
        ("K-means on radiomics", "radiomics_kmeans", "test"),
        ("GMM on diffusion features only", "diffusion_gmm", "test"),
        ("GMM on distilled features", "distilled_gmm", "test"),
        ("K-means on radiomics, oracle matching", "radiomics_kmeans", "oracle_test"),
        ("GMM on diffusion features, oracle matching", "diffusion_gmm", "oracle_test"),
        ("GMM on distilled features, oracle matching", "distilled_gmm", "oracle_test"),
        ("supervised coarse model (same train split)", "supervised", "test"),
    ]
    lines = [
        "| method | MedSeg GGO Dice | MedSeg consolidation Dice | MedSeg infection Dice | "
        "Ma infection Dice |",
        "|---|---|---|---|---|",
    ]
    for label, key, part in rows:
        cells = []
        for name, metrics in (("medseg", ("ggo", "cons", "inf")), ("ma", ("inf",))):
            entry = (results[name].get(key) or {}).get(part)
            for m in metrics:
                if not entry or m not in entry or entry[m] is None:
                    cells.append("not measured")
                else:
                    pooled, per = entry[m]
                    cells.append(f"{f(pooled)} / {f(per)}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append(
        "(pooled Dice over the test split / mean Dice over test slices holding the "
        "class; naming thresholds chosen on val)"
    )
    n = {k: (results[k]["n_val"], results[k]["n_test"]) for k in DATASETS}
    lines.append(f"slices (val, test): {n}")
    for name in DATASETS:
        chosen = {
            k: v.get("chosen_on_val")
            for k, v in results[name].items()
            if isinstance(v, dict) and "chosen_on_val" in v
        }
        lines.append(f"{name} chosen on val: {json.dumps(chosen)}")
        secs = {
            k: round(v["seconds_per_slice"], 2)
            for k, v in results[name].items()
            if isinstance(v, dict) and "seconds_per_slice" in v
        }
        lines.append(f"{name} seconds per slice: {secs}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
