"""The polyp coarse model's second look over tiles where its whole-frame mask is empty
(``--empty-rescue``, ``medrefine.tiling``), and what it costs on frames without a polyp.

Two measures, coarse only, with the preset's flips and post-processing:

- ``frames``: mean Dice and HD95 (pixels, over the images where both masks are non-empty) of
  the whole-frame mask and of the same with the tiles looked at where it is empty, per image in
  OUT.json; the frames it was empty on and what the tiles found there.
- ``free``: the tiles (n x n of the given fraction) of each frame that hold no polyp (none
  within 7 px of the ground truth), each run through the model as the rescue runs it: the share
  in which it finds a mask. No data set here has polyp-free frames; these tiles are what a
  second look at a polyp-free frame would see.

    python scripts/polyp_empty_rescue_eval.py frames ../shared/data/external/etis_larib test \
        eval/rescue_etis.json [--weights W]
    python scripts/polyp_empty_rescue_eval.py free ../shared/data/kvasir_seg val \
        eval/rescue_free_kvasir_val.json [--weights W]

``--tile-gate G``: a presence gate fitted on tiles (``scripts/make_tile_dataset.py``, then
``medrefine train --stage presence``); tiles it judges to hold no polyp are left out
(``tiling.tiled_probs(gate=)``). Measured, not shipped: the polyp model card.
"""

import argparse
import json
import time

import cv2
import numpy as np
import torch

from medrefine.inference import CoarseSegmenter
from medrefine.io import read_image
from medrefine.metrics import segmentation_metrics
from medrefine.postprocess import postprocess
from medrefine.preprocess import from_grid, intensities01, to_grid
from medrefine.presence import PresenceGate
from medrefine.presets import DEFAULT_EMPTY_RESCUE, PRESETS
from medrefine.tiling import tile_boxes, tiled_probs
from medrefine.training.data import find_pairs, read_label_map, split_pairs

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("mode", choices=["frames", "free"])
parser.add_argument("data")
parser.add_argument("split")
parser.add_argument("out")
parser.add_argument("--weights", default=str(PRESETS["polyp"].coarse_weights))
parser.add_argument("--tiles", type=int, default=DEFAULT_EMPTY_RESCUE[0])
parser.add_argument("--fraction", type=float, default=DEFAULT_EMPTY_RESCUE[1])
parser.add_argument("--tile-gate", help="a presence gate for the tiles (safetensors)")
args = parser.parse_args()

torch.set_num_threads(2)
seg = CoarseSegmenter.from_weights(args.weights, "cpu")
gate = PresenceGate.load(args.tile_gate, args.weights, "cpu") if args.tile_gate else None
post = PRESETS["polyp"].postprocess
tta = PRESETS["polyp"].tta
rows: dict = {}
for pair in split_pairs(args.data, find_pairs(args.data))[args.split]:
    loaded = read_image(pair.image)
    dtype = loaded.meta.get("source_dtype", "float32")
    truth = read_label_map(pair.mask, 1) == 1
    if truth.shape != loaded.array.shape[1:]:
        truth = cv2.resize(truth.astype(np.uint8), loaded.array.shape[1:][::-1],
                           interpolation=cv2.INTER_NEAREST) > 0
    if args.mode == "free":
        near = cv2.dilate(truth.astype(np.uint8), np.ones((15, 15), np.uint8)) > 0
        frame01 = intensities01(loaded.array, seg.pre_cfg, dtype)  # as tiled_probs cuts tiles
        found = []
        for top, left, h, w in tile_boxes(truth.shape, args.tiles, args.fraction):
            if near[top:top + h, left:left + w].any():
                continue
            x, grid = to_grid(frame01[:, top:top + h, left:left + w], seg.pre_cfg.size,
                              seg.pre_cfg.resize)
            if gate is not None and gate.probability(x, tta) < gate.threshold:
                found.append(None)
                continue
            probs = from_grid(seg.predict_grid(x[None], tta)[0].cpu().numpy(), grid)[0]
            mask = postprocess(probs, post) > 0
            found.append(float(probs[mask].max()) if mask.any() else None)
        rows[pair.image.stem] = found
        continue
    whole = seg.predict(loaded.array, dtype, tta)[0]
    mask = postprocess(whole, post) > 0
    row = {"whole": segmentation_metrics(mask, truth)}
    if not mask.any():
        t = time.perf_counter()
        tiled = tiled_probs(seg, loaded.array, dtype, tta, args.tiles, args.fraction, gate)
        row["rescue_s"] = time.perf_counter() - t
        if tiled is not None:  # else the whole frame's (empty) mask stands
            mask = postprocess(tiled[0], post) > 0
    row["rescued"] = segmentation_metrics(mask, truth)
    rows[pair.image.stem] = row
    print(pair.image.stem, round(row["whole"]["dice"], 3), round(row["rescued"]["dice"], 3),
          flush=True)

if args.mode == "free":
    tiles = [v for found in rows.values() for v in found]
    hits = [v for v in tiles if v is not None]
    print(f"{len(tiles)} polyp-free tiles of {len(rows)} frames ({args.tiles} x {args.tiles} of "
          f"{args.fraction}): a mask in {len(hits)} ({len(hits) / max(len(tiles), 1):.1%}); "
          f"frames with a polyp-free tile that gets a mask: "
          f"{sum(any(v is not None for v in f) for f in rows.values())} of "
          f"{sum(bool(f) for f in rows.values())}")
else:
    for name in ("whole", "rescued"):
        dice = [r[name]["dice"] for r in rows.values()]
        hd = [r[name]["hd95"] for r in rows.values()
              if r[name]["hd95"] is not None and np.isfinite(r[name]["hd95"])]
        print(f"{name:8s} Dice {np.mean(dice):.4f}  HD95 {np.mean(hd) if hd else float('nan'):.1f}"
              f" ({len(hd)} defined)  n={len(dice)}")
    empty = [k for k, r in rows.items() if "rescue_s" in r]
    print(f"whole-frame mask empty on {len(empty)} of {len(rows)}: "
          + ", ".join(f"{k} -> {rows[k]['rescued']['dice']:.3f} ({rows[k]['rescue_s']:.2f} s)"
                      for k in empty))
with open(args.out, "w") as f:
    json.dump(rows, f, indent=1)
