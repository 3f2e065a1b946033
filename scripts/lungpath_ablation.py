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

3D models (``net.dims`` 3) need volumes, so ``--model3d STAGE1 STAGE2`` scores on
covid_ct_lung_infection_ma only (medseg_covid_ct_infnet holds single slices, no volume groups):

    python scripts/lungpath_ablation.py --stage1 runs/lungpath/stage1.safetensors \
        --stage2 runs/lungpath/stage2.safetensors --out runs/lungpath_ablation \
        --model3d runs/lungpath3d/stage1.safetensors runs/lungpath3d/stage2.safetensors

Each val/test volume (``data.load_stacks``: the manifest's groups, the kept slices of a group
in z order, split at gaps) is one (D, H, W) input of the same pipeline (rank mode, the provided
lung masks): the path a 3D model takes at inference, one z-stack featurised in chunks, one GMM
per stack, ranks per slice. Rows: the 3D distilled (stage-2) and diffusion-only (stage-1)
models, and as a control the 2D ``--stage2`` model through that same volume path (one GMM per
stack instead of per slice). Thresholds, Dice and oracle as for the 2D rows. The 2D rows are
not recomputed: written to OUT/ablation_3d.json, printed beside the 2D rows of
OUT/ablation.json. Cluster maps cached in OUT/cache_<row>_ma_<split>[_limitN].npz.
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


def image_of_stack(slices):
    """Neighbouring slices as one (D, H, W) 8-bit input."""
    from medrefine.io import LoadedImage

    return LoadedImage(
        np.stack([s.image8 for s in slices])[None].astype(np.float32),
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


def make_pipeline(method: str, args, weights=None):
    from medrefine.lungpath.cluster import ClusterConfig
    from medrefine.lungpath.pipeline import InferenceConfig, LungPathologyPipeline

    cfg = InferenceConfig(
        intensity="rank", cluster=ClusterConfig(method="kmeans" if "kmeans" in method else "gmm")
    )
    if weights is None:
        weights = args.stage1 if method == "diffusion_gmm" else args.stage2
    featurize = radiomic_featurize() if method == "radiomics_kmeans" else None
    return LungPathologyPipeline(weights, cfg, featurize=featurize)


def load_cache(cache):
    """A row's cluster maps, statistics and seconds per slice from its cache file."""
    data = np.load(cache, allow_pickle=True)
    clusters = [np.asarray(c, np.uint8) for c in data["clusters"]]
    stats = [np.asarray(st, np.float64) for st in data["stats"]]
    return clusters, stats, float(data["seconds"])


def save_cache(cache, clusters, stats, seconds):
    """Write a row's cluster maps to its cache file; returns them as the row functions do."""
    np.savez_compressed(
        cache,
        clusters=np.array(clusters, dtype=object),
        stats=np.array(stats, dtype=object),
        seconds=seconds,
    )
    return clusters, stats, seconds


def cluster_all(method, name, split, slices, args):
    cache = Path(args.out) / f"cache_{method}_{name}_{split}.npz"
    if cache.is_file():
        return load_cache(cache)
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
    return save_cache(cache, clusters, stats, seconds)


# ------------------------------------------------------------------ volumes (3D models)
VOLUME_ROWS = {  # row: (label, weights from args)
    "distilled_gmm_3d": ("3D distilled, volume path", lambda a: a.model3d[1]),
    "distilled_gmm_2d_volumes": ("2D distilled (--stage2), volume path", lambda a: a.stage2),
    "diffusion_gmm_3d": ("3D diffusion only, volume path", lambda a: a.model3d[0]),
}


def volume_runs(folder, split, slices, limit):
    """[(group, indices into ``slices`` in z order)]: the split's runs of neighbouring slices
    (``data.load_stacks``, the manifest's volume groups); None without volume groups."""
    from medrefine.lungpath.data import load_stacks

    stacks = load_stacks(folder, split, limit)
    if stacks is None:
        return None
    index = {s.stem: i for i, s in enumerate(slices)}
    return [(st.group, [index[stem] for stem in st.stems]) for st in stacks]


def cluster_volumes(row, weights, name, split, slices, runs, args):
    """As ``cluster_all``, with each run of neighbouring slices one (D, H, W) input of the
    pipeline: per-slice cluster maps, each slice carrying its stack's cluster statistics."""
    suffix = f"_limit{args.limit}" if args.limit else ""
    cache = Path(args.out) / f"cache_{row}_{name}_{split}{suffix}.npz"
    if cache.is_file():
        return load_cache(cache)
    from medrefine.errors import InputError

    pipe = make_pipeline("distilled_gmm", args, weights)
    want = 3 if row.endswith("_3d") else 2
    if pipe.model.cfg.dims != want:
        raise SystemExit(f"{weights}: a {pipe.model.cfg.dims}D model, row {row} needs {want}D")
    clusters = [np.full(s.lung.shape, 255, np.uint8) for s in slices]
    stats = [np.full((1, 3), np.nan) for _ in slices]
    t0 = time.perf_counter()
    for group, idx in runs:
        try:
            r = pipe.run(
                image_of_stack([slices[i] for i in idx]), np.stack([slices[i].lung for i in idx])
            )
        except InputError as err:  # refused: empty predictions, counted
            print(f"{name} {split} {group}: {err}", flush=True)
            continue
        for j, i in enumerate(idx):
            clusters[i] = r.clusters[j]
            stats[i] = np.asarray(r.cluster_stats, np.float64)
    seconds = (time.perf_counter() - t0) / max(1, len(slices))
    missed = len(slices) - sum(len(idx) for _, idx in runs)
    if missed:
        print(f"{name} {split}: {missed} slices in no volume group: empty predictions", flush=True)
    return save_cache(cache, clusters, stats, seconds)


def main_volumes(args) -> None:
    """``--model3d``: the volume rows on Ma (see the module docstring)."""
    from medrefine.lungpath.data import load_slices, volume_groups

    name, folder = "ma", DATASETS["ma"]
    results: dict = {"limit": args.limit}
    for other, other_folder in DATASETS.items():
        if other != name and volume_groups(other_folder) is None:
            results[other] = "single slices (no volume groups in its manifest): not scored in 3D"
    val = load_slices(folder, "val", args.limit)
    test = load_slices(folder, "test", args.limit)
    runs = {"val": volume_runs(folder, "val", val, args.limit)}
    runs["test"] = volume_runs(folder, "test", test, args.limit)
    res = results[name] = {
        "n_val": len(val),
        "n_test": len(test),
        "stacks": {k: [[g, len(idx)] for g, idx in v] for k, v in runs.items()},
    }
    for row, (_, pick) in VOLUME_ROWS.items():
        weights = pick(args)
        res[row] = evaluate(
            cluster_volumes(row, weights, name, "val", val, runs["val"], args),
            cluster_volumes(row, weights, name, "test", test, runs["test"], args),
            val,
            test,
            name,
        )
        res[row]["weights"] = weights
        print(f"{row}: done", flush=True)
    suffix = f"_limit{args.limit}" if args.limit else ""
    (Path(args.out) / f"ablation_3d{suffix}.json").write_text(json.dumps(results, indent=2))
    print(table_3d(results, Path(args.out) / "ablation.json"))


def table_3d(results, ablation_2d: Path) -> str:
    def f(v):
        return "n/a" if v is None or not np.isfinite(v) else f"{v:.3f}"

    ma = results["ma"]
    ref = json.loads(ablation_2d.read_text())["ma"] if ablation_2d.is_file() else {}
    rows = [
        ("2D distilled, one slice per input (shipped; ablation.json)", ref.get("distilled_gmm")),
        ("2D diffusion only, one slice per input (ablation.json)", ref.get("diffusion_gmm")),
    ] + [(label, ma.get(row)) for row, (label, _) in VOLUME_ROWS.items()]
    lines = [
        "| model (Ma et al. test) | infection Dice | oracle matching | "
        "ground_glass_rank / consolidation_rank (val objective) | seconds per slice |",
        "|---|---|---|---|---|",
    ]
    for label, entry in rows:
        if not entry:
            lines.append(f"| {label} | not measured | | | |")
            continue
        ch = entry["chosen_on_val"]
        lines.append(
            f"| {label} | {f(entry['test']['inf'][0])} / {f(entry['test']['inf'][1])} | "
            f"{f(entry['oracle_test']['inf'][0])} / {f(entry['oracle_test']['inf'][1])} | "
            f"{ch['ground_glass_rank']} / {ch['consolidation_rank']} "
            f"({f(ch['val_objective'])}) | {entry['seconds_per_slice']:.2f} |"
        )
    lines.append(
        "(pooled Dice over the test split / mean Dice over test slices holding infection; "
        "rank thresholds chosen on val; volume path: each volume one (D, H, W) input, one GMM "
        "per stack)"
    )
    lines.append(f"slices (val, test): {(ma['n_val'], ma['n_test'])}; stacks: {ma['stacks']}")
    if results.get("limit"):
        lines.append(f"--limit {results['limit']}: the ablation.json rows are the full splits")
    if not ref:
        lines.append(f"{ablation_2d} not found: 2D rows not shown")
    for other, why in results.items():
        if isinstance(why, str):
            lines.append(f"{other}: {why}")
    return "\n".join(lines)


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


def evaluate(val_run, test_run, val, test, name) -> dict:
    """A clustering row: the two rank thresholds chosen on val (RANK_GRID, ``objective``),
    test Dice with them, oracle matching on test, seconds per test slice."""
    cv, sv, _ = val_run
    ct, stt, sec = test_run
    best = max(
        (objective(scores(named(cv, sv, a, b), val, name), name), a, b)
        for a in RANK_GRID
        for b in RANK_GRID
        if b >= a
    )
    return {
        "chosen_on_val": {
            "ground_glass_rank": best[1],
            "consolidation_rank": best[2],
            "val_objective": best[0],
        },
        "test": scores(named(ct, stt, best[1], best[2]), test, name),
        "oracle_test": scores(oracle(ct, test, name), test, name),
        "seconds_per_slice": sec,
    }


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
    ap.add_argument(
        "--model3d",
        nargs=2,
        metavar=("STAGE1", "STAGE2"),
        help="3D weights (net.dims 3): score only the volume rows on Ma (OUT/ablation_3d.json, "
        "printed beside OUT/ablation.json's 2D rows); the 2D rows are not recomputed",
    )
    args = ap.parse_args()
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from medrefine.lungpath.data import load_slices

    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.model3d:
        main_volumes(args)
        return
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
            res[method] = evaluate(
                cluster_all(method, name, "val", val, args),
                cluster_all(method, name, "test", test, args),
                val,
                test,
                name,
            )
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
