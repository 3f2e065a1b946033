"""``medrefine inpaint``: fill a region of a 2D X-ray (ribs, a device, any region) with the
inpainting diffusion model.

  medrefine inpaint --image cxr.png --mask region.png -o out
  medrefine inpaint --image cxr.dcm --mask-from lung -o out --steps 4 --samples 4 --seed 0
  medrefine inpaint --image cxr.png --mask-from devices -o out     # remove tubes, lines, wires

Writes ``OUT/<stem>.png`` (the input's size and bit depth: 16-bit in, 16-bit out; a DICOM input
gives ``OUT/<stem>.dcm`` too, a derived image with new UIDs), ``OUT/<stem>_compare.png``
(before | mask | after) and ``OUT/report.json`` (timings, parameters, weights, provenance).
Every output says that it is a synthetic image, not for diagnosis. The input is never
overwritten. A mask of another size, an empty mask or one covering the whole image is refused.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np

from medrefine.errors import InputError
from medrefine.presets import DEFAULT_PRESETS

# --mask-from NAME: (segmentation preset, margin added around its mask as a share of the
# image's larger side: a device is covered with a few pixels to spare, as a user would)
MASK_SOURCES = {"lung": ("lung", 0.0), "devices": ("devices", 0.006)}


def add_parser(sub) -> None:
    p = sub.add_parser("inpaint", help="fill a region of an X-ray with the diffusion model",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", required=True, type=Path, help="2D X-ray (PNG/JPEG/TIFF/DICOM)")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--mask", type=Path, help="mask of the region to fill (non-zero = fill), "
                       "the image's size")
    group.add_argument("--mask-from", choices=sorted(MASK_SOURCES),
                       help="take the mask from a segmentation: lung = the lung preset's lung "
                            "fields; devices = the devices preset's tubes, lines, wires and "
                            "markers, with a margin of a few pixels")
    p.add_argument("-o", "--out", required=True, type=Path, help="output folder")
    p.add_argument("--preset", default=DEFAULT_PRESETS["inpainting"],
                   help=f"inpainting model (`medrefine presets`; default "
                   f"{DEFAULT_PRESETS['inpainting']})")
    p.add_argument("--weights", type=Path, help="inpainting weights file instead of the preset")
    p.add_argument("--steps", type=int, help="DDIM steps (default: the model's, 4)")
    p.add_argument("--samples", type=int, help="samples averaged (default: the model's)")
    p.add_argument("--blend", choices=("hard", "feather", "poisson"),
                   help="seam blending (default: the model's, chosen on val)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.set_defaults(func=run)


def run(args) -> int:
    from medrefine.commands.guard import (
        ReadFiles,
        check_writable,
        option_files,
        out_lock,
        refuse_replacing_reads,
    )
    from medrefine.io import stem_of

    t0 = time.perf_counter()
    out_dir: Path = args.out
    stem = stem_of(args.image)
    check_writable(out_dir)
    # the image, the mask (it may sit in OUT under the image's stem) and the weights are
    # never written over; <stem>.dcm counts whether or not the input turns out to be DICOM
    reads = ReadFiles([args.image, *option_files(args, "mask", "weights")])
    names = [f"{stem}.png", f"{stem}_compare.png", f"{stem}.dcm", "report.json"]
    refuse_replacing_reads([out_dir / n for n in names], reads, out_dir)
    with out_lock(out_dir):
        return _inpaint(args, out_dir, stem, t0)


def _inpaint(args, out_dir: Path, stem: str, t0: float) -> int:
    from medrefine.commands.outputs import write_json
    from medrefine.inpaint.pipeline import SYNTHETIC_NOTE, InpaintingPipeline
    from medrefine.io import read_image

    image_path: Path = args.image
    loaded = read_image(image_path)
    if loaded.is_volume:
        raise InputError(f"{image_path}: is a volume; inpainting takes a 2D X-ray")
    is_dicom = loaded.meta.get("format") == "dicom"
    mask = mask_for(args, loaded)
    pipe = InpaintingPipeline(args.preset, weights=args.weights, steps=args.steps,
                              samples=args.samples, blend=args.blend, seed=args.seed)
    outputs, extra = [], {}
    if is_dicom:
        from medrefine.inpaint.outputs import inpaint_dicom

        result, dcm = inpaint_dicom(pipe, image_path, mask, out_dir / f"{stem}.dcm")
        outputs.append(str(dcm))
        extra["dicom"] = {"derived": True, "new_uids": True}
    else:
        from medrefine.inpaint.pipeline import as_source_dtype

        result = pipe.run(as_source_dtype(loaded), mask)
    from medrefine.inpaint.outputs import write_compare, write_png

    png, depth = write_png(result.inpainted, out_dir / f"{stem}.png")
    compare = write_compare(result, out_dir / f"{stem}_compare.png")
    outputs = [str(png), str(compare), *outputs]
    report = {
        "command": "inpaint",
        "synthetic": True,
        "note": SYNTHETIC_NOTE,
        "image": str(image_path),
        "mask": str(args.mask) if args.mask else f"--mask-from {args.mask_from}",
        "outputs": outputs,
        "size": list(result.image.shape),
        "bit_depth": depth,
        "hole_fraction": float(result.mask.mean()),
        "timings": {**result.timings, "command_total": time.perf_counter() - t0},
        **extra,
        "provenance": {**pipe.provenance(), "python_version": platform.python_version(),
                       "torch_version": _torch_version(),
                       "arguments": {k: (str(v) if isinstance(v, Path) else v)
                                     for k, v in sorted(vars(args).items()) if k != "func"}},
    }
    write_json(out_dir / "report.json", report)
    print(f"{png} (synthetic image, not for diagnosis)")
    return 0


def mask_for(args, loaded) -> np.ndarray:
    """The hole mask on the image's grid, from --mask or --mask-from."""
    from medrefine.inpaint.pipeline import check_mask

    if args.mask is not None:
        from medrefine.io import read_mask

        mask = read_mask(args.mask)
        return check_mask(mask, loaded.spatial_shape, str(args.mask))
    import cv2

    from medrefine.pipeline import SegmentationPipeline

    preset, margin = MASK_SOURCES[args.mask_from]
    seg = SegmentationPipeline(preset=preset, use_diffusion=False)
    mask = (np.asarray(seg.run(loaded).mask) > 0).astype(np.uint8)
    mask = mask[0] if mask.ndim == 3 else mask
    if not mask.any():
        raise InputError(f"{args.image}: the {preset} preset found nothing to fill in this "
                         "image; give the region with --mask")
    if margin:
        r = max(1, round(margin * max(mask.shape)))
        mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1,) * 2))
    return check_mask(mask, loaded.spatial_shape, f"--mask-from {args.mask_from}")


def _torch_version() -> str:
    import torch

    return torch.__version__
