"""``medrefine inpaint``: fill a region of 2D X-rays (ribs, a device, any region) with the
inpainting diffusion model.

  medrefine inpaint --image cxr.png --mask region.png -o out
  medrefine inpaint --image cxr.dcm --mask-from lung -o out --steps 4 --samples 4 --seed 0
  medrefine inpaint --image cxr.png --mask-from devices -o out     # remove tubes, lines, wires
  medrefine inpaint --image xrays/ --mask holes/ -o out             # one mask per image, by stem

``--image`` takes files, folders and glob patterns; ``--mask`` one mask file (one image) or a
folder of masks named like the images; ``--mask-from`` makes each image's mask. For each image:
``OUT/<stem>.png`` (the input's size and bit depth: 16-bit in, 16-bit out; a DICOM input gives
``OUT/<stem>.dcm`` too, a derived image with new UIDs) and ``OUT/<stem>_compare.png``
(before | mask | after). Every output says that it is a synthetic image, not for diagnosis. The
inputs are never overwritten. A mask of another size, an empty mask or one covering the whole
image is refused.

Batch behaviour as ``medrefine segment``: an image that fails is reported in one line and
skipped (exit code 2); OUT/report.json (timings, parameters, weights, provenance; for one image
its fields at the top too) and OUT/report.csv list every image; a re-run skips the images whose
outputs are all there (``--overwrite`` redoes them); Ctrl-C or SIGTERM writes the report so
far; under torchrun the images are shared out.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from medrefine.batch import Job, open_batch
from medrefine.batch.guard import (
    REPORTS,
    ReadFiles,
    check_writable,
    option_files,
    refuse_replacing_reads,
)
from medrefine.batch.inputs import expand_inputs, probe_kind, unique_stems
from medrefine.batch.report import run_head, summary_line
from medrefine.commands.options import run_environment
from medrefine.errors import ConfigError, InputError
from medrefine.presets import DEFAULT_PRESETS

# --mask-from NAME: (segmentation preset, margin added around its mask as a share of the
# image's larger side: a device is covered with a few pixels to spare, as a user would)
MASK_SOURCES = {"lung": ("lung", 0.0), "devices": ("devices", 0.006)}
# the fields of the one image of a one-image run that report.json also gives at its top
SINGLE_FIELDS = ("mask", "outputs", "size", "bit_depth", "hole_fraction", "timings", "dicom")


def add_parser(sub) -> None:
    p = sub.add_parser("inpaint", help="fill a region of X-rays with the diffusion model",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", required=True, nargs="+", metavar="IMAGE",
                   help="2D X-ray (PNG/JPEG/TIFF/DICOM), folder of them or glob pattern")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--mask", type=Path, help="mask of the region to fill (non-zero = fill), "
                       "the image's size; or a folder of masks named like the images")
    group.add_argument("--mask-from", choices=sorted(MASK_SOURCES),
                       help="take the mask from a segmentation: lung = the lung preset's lung "
                            "fields; devices = the devices preset's tubes, lines, wires and "
                            "markers, with a margin of a few pixels")
    p.add_argument("-o", "--out", required=True, type=Path, help="output folder")
    p.add_argument("--overwrite", action="store_true",
                   help="inpaint every image again, even those whose outputs are all in OUT")
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
    started = datetime.now(UTC).isoformat(timespec="seconds")
    out_dir: Path = args.out
    check_writable(out_dir)
    inputs, problems = expand_inputs([str(s) for s in args.image])
    inputs = sorted(inputs, key=str)
    jobs = [Job(p, s, mask_file(args, p, len(inputs)), {"mask": mask_text(args, p)})
            for p, s in zip(inputs, unique_stems(inputs), strict=True)]  # fmt: skip
    # the images, the masks (one may sit in OUT under an image's stem) and the weights are
    # never written over; <stem>.dcm counts whether or not the input turns out to be DICOM
    reads = ReadFiles([*inputs, *option_files(args, "mask", "weights")])
    names = [n for job in jobs for n in (f"{job.stem}.png", f"{job.stem}_compare.png",
                                         f"{job.stem}.dcm")]  # fmt: skip
    refuse_replacing_reads([out_dir / n for n in [*names, *REPORTS]], reads, out_dir)
    quiet = getattr(args, "quiet", False)
    with open_batch(out_dir, overwrite=args.overwrite, quiet=quiet) as batch:
        from medrefine.inpaint.pipeline import SYNTHETIC_NOTE, InpaintingPipeline

        pipe = InpaintingPipeline(args.preset, weights=args.weights, steps=args.steps,
                                  samples=args.samples, blend=args.blend, seed=args.seed)
        batch.add_problems(problems)
        prov = {**pipe.provenance(), "seed": args.seed, **run_environment(args)}
        head = run_head("inpaint", started, out_dir, prov, world_size=batch.ranks.world_size,
                        synthetic=True, note=SYNTHETIC_NOTE,
                        image=args.image[0] if len(args.image) == 1 else list(args.image))
        report = batch.run(InpaintTask(pipe, args, out_dir), jobs, head)
        if batch.ranks.is_main:
            lead = f"inpainted {report['n_ok']} of {report['n_inputs']} images into {out_dir}"
            print(summary_line(report, lead) + " (synthetic images, not for diagnosis)")
        return batch.exit_code(report)


def mask_file(args, image: Path, n_images: int) -> Path | None:
    """The ``--mask`` of ``image``: the file given (one image), or the mask named like it in
    the folder given (None when none is: the job fails with the reason); None for
    ``--mask-from``."""
    if args.mask is None:
        return None
    if not args.mask.is_dir():
        if n_images > 1:
            raise ConfigError(f"--mask {args.mask} is one mask for {n_images} images; give a "
                              "folder of masks named like the images, or --mask-from")
        return args.mask
    from medrefine.io import stem_of

    found = [p for p in sorted(args.mask.glob(f"{stem_of(image)}.*")) if p.is_file()]
    return found[0] if found else None


def mask_text(args, image: Path) -> str:
    """The report's ``mask`` of ``image``."""
    if args.mask is None:
        return f"--mask-from {args.mask_from}"
    found = mask_file(args, image, 1)
    return str(found) if found is not None else str(args.mask)


class InpaintTask:
    """Inpaint each job's image (``Job.source``) in its mask (``Job.data``, else from
    ``--mask-from``) and write ``<stem>.png``, ``<stem>_compare.png`` (and ``<stem>.dcm``)."""

    name, unit = "inpaint", "image"
    columns = ["input", "mask", "status", "outputs", "seconds", "error", "bit_depth",
               "hole_fraction", "rank"]  # fmt: skip
    weights = ("inpaint",)

    def __init__(self, pipe, args, out_dir: Path) -> None:
        self.pipe, self.args, self.out_dir = pipe, args, out_dir
        self._seg = None  # the --mask-from segmentation, loaded at its first image

    def outputs(self, job: Job) -> list[str]:
        names = [f"{job.stem}.png", f"{job.stem}_compare.png"]
        return [f"{job.stem}.dcm", *names] if probe_kind(Path(job.source)).dicom else names

    def report_fields(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """A one-image run: its fields at the top, as the one-image report gave them."""
        if len(records) != 1 or records[0]["status"] != "ok":
            return {}
        return {k: records[0][k] for k in SINGLE_FIELDS if k in records[0]}

    def make(self, job: Job, echo) -> dict[str, Any]:
        from medrefine.inpaint.outputs import inpaint_dicom, write_compare, write_png
        from medrefine.inpaint.pipeline import as_source_dtype
        from medrefine.io import read_image

        t0 = time.perf_counter()
        path = Path(job.source)
        if self.args.mask is not None and job.data is None:
            raise InputError(f"{path}: no mask named {path.name.split('.')[0]}.* in "
                             f"{self.args.mask}; give one mask per image")
        loaded = read_image(path)
        if loaded.is_volume:
            raise InputError(f"{path}: is a volume; inpainting takes a 2D X-ray")
        if self.args.mask_from is not None and self._seg is None:
            self._seg = mask_source(self.args.mask_from)
        mask = mask_for(self.args, loaded, mask=job.data, seg=self._seg)
        outputs, extra = [], {}
        if loaded.meta.get("format") == "dicom":
            result, dcm = inpaint_dicom(self.pipe, path, mask, self.out_dir / f"{job.stem}.dcm")
            outputs.append(dcm.name)
            extra["dicom"] = {"derived": True, "new_uids": True}
        else:
            result = self.pipe.run(as_source_dtype(loaded), mask)
        png, depth = write_png(result.inpainted, self.out_dir / f"{job.stem}.png")
        compare = write_compare(result, self.out_dir / f"{job.stem}_compare.png")
        seconds = time.perf_counter() - t0
        return {
            "input": str(path),
            **job.fields,
            "status": "ok",
            "outputs": [png.name, compare.name, *outputs],
            "size": list(result.image.shape),
            "bit_depth": depth,
            "hole_fraction": float(result.mask.mean()),
            "timings": {**result.timings, "command_total": seconds},
            **extra,
            "seconds": seconds,
        }


def mask_source(name: str):
    """The segmentation pipeline of ``--mask-from name`` (no refinement)."""
    from medrefine.pipeline import SegmentationPipeline

    return SegmentationPipeline(preset=MASK_SOURCES[name][0], use_diffusion=False)


def mask_for(args, loaded, mask: Path | None = None, seg=None) -> np.ndarray:
    """The hole mask on the image's grid, from ``mask`` (default ``--mask``) or ``--mask-from``
    (``seg``: its segmentation pipeline, loaded here when not given)."""
    from medrefine.inpaint.pipeline import check_mask

    mask = args.mask if mask is None else mask
    if mask is not None:
        from medrefine.io import read_mask

        return check_mask(read_mask(mask), loaded.spatial_shape, str(mask))
    import cv2

    preset, margin = MASK_SOURCES[args.mask_from]
    seg = mask_source(args.mask_from) if seg is None else seg
    hole = (np.asarray(seg.run(loaded).mask) > 0).astype(np.uint8)
    hole = hole[0] if hole.ndim == 3 else hole
    if not hole.any():
        raise InputError(f"{loaded.path or args.image}: the {preset} preset found nothing to "
                         "fill in this image; give the region with --mask")
    if margin:
        r = max(1, round(margin * max(hole.shape)))
        hole = cv2.dilate(hole, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1,) * 2))
    return check_mask(hole, loaded.spatial_shape, f"--mask-from {args.mask_from}")
