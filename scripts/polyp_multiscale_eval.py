"""Multi-scale coarse probabilities for the polyp preset (issue 27: small polyps of other archives).

The shipped coarse model (grid 256, with the preset's flips) beside the same network run on the
image resized to 320 and 384 from the original ("orig") or upsampled from the 256 grid ("up"),
and averages of those probabilities, each post-processed as the preset does; mean Dice and
HD95 (pixels, over images where both masks are non-empty) per combination, per-image Dice in
OUT.json. Measured, not shipped: see the polyp model card.

    python scripts/polyp_multiscale_eval.py ../shared/data/kvasir_seg val eval/ms_kvasir_val.json
    python scripts/polyp_multiscale_eval.py ../shared/data/external/etis_larib test \
        eval/ms_etis.json
"""

import json
import sys
from dataclasses import replace

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from medrefine.inference import CoarseSegmenter
from medrefine.io import read_image
from medrefine.metrics import segmentation_metrics
from medrefine.postprocess import postprocess
from medrefine.preprocess import from_grid, preprocess
from medrefine.presets import PRESETS
from medrefine.training.data import find_pairs, read_label_map, split_pairs

torch.set_num_threads(2)
data, split = sys.argv[1], sys.argv[2]
w = "src/medrefine/weights/polyp/coarse.safetensors"
seg = CoarseSegmenter.from_weights(w, "cpu")
post = PRESETS["polyp"].postprocess
tta = ("hflip", "vflip")
rows = {}
pairs = split_pairs(data, find_pairs(data))[split]
for pair in pairs:
    img = read_image(pair.image)
    dt = img.meta.get("source_dtype", "float32")
    gt = read_label_map(pair.mask, 1) == 1
    if gt.shape != img.array.shape[1:]:
        gt = (
            cv2.resize(
                gt.astype(np.uint8), img.array.shape[1:][::-1], interpolation=cv2.INTER_NEAREST
            )
            > 0
        )
    probs = {}
    for g in (256, 320, 384):
        cfg = replace(seg.pre_cfg, size=(g, g))
        x, grid = preprocess(img.array, cfg, dt)
        p = seg.predict_grid(x[None], tta)[0].cpu().numpy()
        probs[f"orig{g}"] = from_grid(p, grid)[0]
    x, grid = preprocess(img.array, seg.pre_cfg, dt)
    xt = torch.as_tensor(x[None])
    for g in (320, 384):
        up = F.interpolate(xt, size=(g, g), mode="bilinear", align_corners=False)
        p = seg.predict_grid(up, tta)
        p = F.interpolate(p, size=(256, 256), mode="area")[0].numpy()
        probs[f"up{g}"] = from_grid(p, grid)[0]
    combos = {
        "256": ["orig256"],
        "orig320": ["orig320"],
        "256+orig320": ["orig256", "orig320"],
        "256+orig384": ["orig256", "orig384"],
        "256+up320": ["orig256", "up320"],
        "256+up384": ["orig256", "up384"],
        "256+320+384": ["orig256", "orig320", "orig384"],
        "max256,320": "max",
    }
    r = {}
    for name, keys in combos.items():
        if keys == "max":
            pm = np.maximum(probs["orig256"], probs["orig320"])
        else:
            pm = np.mean([probs[k] for k in keys], axis=0)
        m = postprocess(np.clip(pm, 0, 1), post) > 0
        met = segmentation_metrics(m, gt)
        r[name] = (met["dice"], met["hd95"])
    rows[pair.image.stem] = r
    print(pair.image.stem, {k: round(v[0], 3) for k, v in r.items()}, file=sys.stderr, flush=True)
names = list(next(iter(rows.values())))
for n in names:
    d = [rows[s][n][0] for s in rows]
    h = [rows[s][n][1] for s in rows if rows[s][n][1] is not None and np.isfinite(rows[s][n][1])]
    print(f"{n:14s} dice {np.mean(d):.4f}  hd95 {np.mean(h):.1f} (n_hd {len(h)})  n={len(d)}")
json.dump(rows, open(sys.argv[3], "w"))
