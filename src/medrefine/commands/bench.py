"""``medrefine bench``: speed and memory of each stage on a shipped sample image."""

from __future__ import annotations

import json
from pathlib import Path

from medrefine.errors import ConfigError
from medrefine.presets import DEFAULT_PRESET, DEFAULT_PRESETS, get_preset


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="print per-stage speed and peak memory (JSON + table)")
    p.add_argument("--preset", help=f"shipped model set (`medrefine presets`; default "
                   f"{DEFAULT_PRESET}; with --inpaint: {DEFAULT_PRESETS['inpainting']}); an "
                   "inpainting preset benches the inpainting model")
    p.add_argument("--quick", action="store_true", help="fewer repeats and configurations")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    p.add_argument("--json", type=Path, help="also write the JSON document here")
    p.add_argument("--backend", nargs="+", choices=["torch", "onnx", "onnx-int8"],
                   help="also compare these inference backends (coarse and one refinement)")
    p.add_argument("--from-noise", type=int, metavar="N", default=0,
                   help="also compare our refinement with sampling from pure noise (1000 DDPM "
                   "and 50 DDIM steps, 5 samples) on N test images of --data (or the shipped "
                   "sample when no --data is given); slow: minutes per image")
    p.add_argument("--data", type=Path, help="data folder (images/, masks/, manifest.json) "
                   "for --from-noise; its test split is used")
    p.add_argument("--inpaint", action="store_true",
                   help="bench the X-ray inpainting model instead (preset inpaint, or --weights; "
                   "a 512-px sample with a rib-band mask; --onnx-dir adds its ONNX graphs)")
    p.add_argument("--weights", type=Path, help="with --inpaint: inpainting weights file")
    p.add_argument("--onnx-dir", type=Path, help="with --inpaint: a folder from "
                   "`medrefine export --inpaint`")
    p.set_defaults(func=run)


def run(args) -> int:
    from medrefine.bench import format_table, run_bench

    task = get_preset(args.preset, task=None).task if args.preset else "segmentation"
    if args.inpaint or task == "inpainting":
        return _inpaint(args)
    if task != "segmentation":
        raise ConfigError(f"bench: preset {args.preset!r} is for {task}; bench runs "
                          "segmentation and inpainting presets (lung pathology: "
                          "scripts/lungpath_bench.py)")
    args.preset = args.preset or DEFAULT_PRESET
    result = run_bench(args.preset, quick=args.quick, device=args.device, threads=args.threads,
                       backends=tuple(args.backend) if args.backend else None)
    comparison = None
    if args.from_noise:
        comparison = _from_noise(args)
        result["from_noise"] = comparison
    text = json.dumps(result, indent=2)
    print(text)
    print(format_table(result))
    if comparison:
        from medrefine.compare import format_comparison

        print(format_comparison(comparison))
    if args.json:
        from medrefine.training.runlog import atomic_write_text

        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.json, text)
    return 0


def _from_noise(args):
    from medrefine.compare import compare_from_noise
    from medrefine.pipeline import SegmentationPipeline
    from medrefine.presets import sample_path

    if args.data:
        from medrefine.training.data import find_pairs, split_pairs

        split = split_pairs(args.data, find_pairs(args.data))["test"][: args.from_noise]
        cases = [(p.image, p.mask) for p in split]
    else:
        image = sample_path(args.preset)
        cases = [(image, image.with_name(image.stem + "_mask.png"))]
    pipe = SegmentationPipeline(preset=args.preset, device=args.device)
    return compare_from_noise(pipe, cases)


def _inpaint(args) -> int:
    from medrefine.inpaint.bench import bench_inpaint, format_inpaint_table

    preset = args.preset or DEFAULT_PRESETS["inpainting"]
    result = bench_inpaint(preset, weights=args.weights, quick=args.quick,
                           threads=args.threads, onnx_dir=args.onnx_dir)
    text = json.dumps(result, indent=2)
    print(text)
    print(format_inpaint_table(result))
    if args.json:
        from medrefine.training.runlog import atomic_write_text

        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.json, text)
    return 0
