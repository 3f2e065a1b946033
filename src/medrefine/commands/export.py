"""``medrefine export --onnx OUT_DIR``: the models as ONNX graphs, for ONNX Runtime.

OUT_DIR receives (B, the batch, is a dynamic axis; H x W is the model's grid):

  coarse.onnx             image01 (B, C, H, W) -> probs (B, K, H, W)
  refiner_condition.onnx  image01 (B, C, H, W), coarse (B, 1, H, W) -> full, f0, f1, f2, f3
  refiner_step.onnx       x_t (B, 1, H, W), t (B,) int64, full, f0..f3 -> out (B, 1, H, W)
  *.int8.onnx             with --quantize int8: int8 copies (static quantisation, calibrated
                          on --calibration's training images, else the shipped samples)
  manifest.json           per model: the weights' medrefine info (model and diffusion configs,
                          refinement defaults, preprocessing), the weights' SHA-256 and each
                          graph's SHA-256, inputs and outputs

Run the folder with ``segment --backend onnx`` (graphs then come from the per-user cache, made
on first use), or from Python: SegmentationPipeline(..., backend="onnx", onnx_dir=OUT_DIR).

examples:
  medrefine export --onnx onnx/polyp --preset polyp
  medrefine export --onnx onnx/mine --weights c.safetensors --refiner-weights r.safetensors \\
      --quantize int8 --calibration shared/data/kvasir_seg
"""

from __future__ import annotations

import argparse
from pathlib import Path

from medrefine.errors import ConfigError
from medrefine.presets import DEFAULT_PRESET, DEFAULT_PRESETS, PRESETS, get_preset


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "export",
        help="export the models to ONNX (optionally int8) for ONNX Runtime",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--onnx",
        type=Path,
        required=True,
        metavar="OUT_DIR",
        help="folder for the graphs and manifest.json (created)",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help=f"shipped model set (default {DEFAULT_PRESET} without --weights or --refiner-weights)",
    )
    group.add_argument(
        "--weights", type=Path, metavar="COARSE.safetensors", help="coarse model weights"
    )
    parser.add_argument(
        "--refiner-weights",
        type=Path,
        metavar="R.safetensors",
        help="diffusion refiner weights (with --preset it replaces the preset's refiner)",
    )
    parser.add_argument("--no-refine", action="store_true", help="export the coarse model only")
    parser.add_argument("--opset", type=int, metavar="N", help="ONNX opset (default 18)")
    parser.add_argument(
        "--quantize",
        choices=["int8"],
        help="also write int8 graphs (static quantisation: faster on CPUs with int8 "
        "instructions such as VNNI; check the masks on your data)",
    )
    parser.add_argument(
        "--calibration",
        type=Path,
        metavar="DATA_DIR",
        help="data folder (images/ + masks/) whose training split calibrates "
        "the int8 ranges (default: the shipped sample images)",
    )
    parser.add_argument(
        "--inpaint",
        nargs="?",
        const=DEFAULT_PRESETS["inpainting"],
        metavar="WEIGHTS",
        help="export the X-ray inpainting model instead: the shipped preset, or a weights file "
        "(inpaint_step.onnx; with --quantize int8 also inpaint_step.int8.onnx)",
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from medrefine.export import OPSET, export_onnx

    if args.calibration is not None and args.quantize is None:
        raise ConfigError("--calibration sets the int8 ranges; add --quantize int8")
    if args.inpaint:
        return _export_inpaint(args)
    named = args.weights is not None or args.refiner_weights is not None
    preset = get_preset(args.preset or DEFAULT_PRESET) if args.preset or not named else None
    coarse = args.weights or (preset.coarse_weights if preset else None)
    if args.weights is None and preset is not None and len(preset.coarse_members) > 1:
        raise ConfigError(
            f"preset {preset.name!r} runs an ensemble of {len(preset.coarse_members)} coarse "
            "models and a folder holds one; `--backend onnx` without a folder exports each "
            "member to the cache on first use, or export one member with --weights FILE"
        )
    refiner = args.refiner_weights or (preset.refiner_weights if preset else None)
    if args.no_refine:
        if coarse is None:
            raise ConfigError("--no-refine leaves nothing to export; give --weights or --preset")
        refiner = None
    manifest = export_onnx(
        args.onnx,
        coarse,
        refiner,
        opset=args.opset or OPSET,
        quantize=args.quantize,
        calibration=args.calibration,
    )
    for part, entry in manifest["models"].items():
        files = [g["file"] for g in (*entry["graphs"].values(), *entry.get("int8", {}).values())]
        sizes = ", ".join(f"{f} ({(args.onnx / f).stat().st_size / 1e6:.1f} MB)" for f in files)
        print(
            f"{part} ({entry['weights']['name']}, sha256 {entry['weights']['sha256'][:12]}): "
            f"{sizes}"
        )
    print(f"wrote {args.onnx / 'manifest.json'}")
    return 0


def _export_inpaint(args: argparse.Namespace) -> int:
    from medrefine.export import OPSET
    from medrefine.inpaint.export import export_inpaint_onnx
    from medrefine.inpaint.pipeline import preset_weights
    from medrefine.presets import INPAINT_PRESETS

    if args.preset or args.weights or args.refiner_weights or args.calibration:
        raise ConfigError("--inpaint exports the inpainting model only; leave out "
                          "--preset/--weights/--refiner-weights/--calibration")
    weights = (preset_weights(args.inpaint) if args.inpaint in INPAINT_PRESETS
               else Path(args.inpaint))
    manifest = export_inpaint_onnx(weights, args.onnx, opset=args.opset or OPSET,
                                   quantize=args.quantize)
    for name, graph in manifest["graphs"].items():
        size = (args.onnx / graph["file"]).stat().st_size / 1e6
        diff = manifest["max_abs_x0_diff_vs_torch"][name]
        print(f"inpaint {name}: {graph['file']} ({size:.1f} MB), max |x0 - torch x0| {diff:.4f}")
    print(f"wrote {args.onnx / 'manifest.json'}")
    return 0
