"""``medrefine refine --image X --mask M -o OUT``: refine a mask made by any tool (nnU-Net, SAM,
a manual outline) with the diffusion refiner, conditioned on the image.

The mask (PNG, NIfTI or DICOM-SEG; any non-zero label counts as foreground) must have the
image's size. Instead of a mask, ``--box x0,y0,x1,y1`` (pixels, x to the right, y down; once per
object) prompts the refiner with boxes, as a detector or a quick drag gives them; with
``--box-engine litemedsam`` LiteMedSAM turns them into a mask first, which is then refined and
reviewed as a given mask (``auto``, the default, takes the preset's engine). The strength
is ``auto`` unless given: picked per image from how far the refiner would move the mask, and
where the refiner is unsure of its own correction the mask is returned as it came. The refined
mask is written to OUT/<image stem>.png (0/255). ``--image`` and
``--mask`` may also both be folders: images and masks are then paired by file stem.

Batch behaviour as ``medrefine segment``: pairs that fail are reported on stderr and skipped
(exit code 2); OUT/report.json and OUT/report.csv record each pair with the run's provenance; a
re-run skips the images whose outputs are all there (``--overwrite`` redoes them); Ctrl-C or
SIGTERM writes the report so far; under torchrun the pairs are shared out.

examples:
  medrefine refine --image case1.png --mask nnunet/case1.png -o refined/ --preset polyp
  medrefine refine --image images/ --mask sam_masks/ -o refined/ --weights refiner.safetensors
  medrefine refine --image case1.png --box 120,80,260,210 -o refined/ --preset polyp
  medrefine refine --image case1.png --box 120,80,260,210 -o refined/ --box-engine litemedsam
"""

from __future__ import annotations

import argparse
import json
import logging
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
from medrefine.batch.inputs import folder_inputs, unique_stems
from medrefine.batch.records import failure_record
from medrefine.batch.report import run_head, summary_line
from medrefine.batch.segment import (
    SegmentTask,
    check_formats_fit,
    planned_names,
    result_record,
    write_outputs,
)
from medrefine.commands.options import (
    DEFAULT_PRESET,
    add_device_option,
    add_mask_options,
    add_out_option,
    parse_formats,
    postprocess_config,
    provenance,
    refine_overrides,
)
from medrefine.errors import ConfigError, InputError
from medrefine.io import read_image, read_mask, stem_of
from medrefine.io.base import full_suffix
from medrefine.io.sniff import SUFFIX_FORMATS
from medrefine.pipeline import SegmentationPipeline
from medrefine.postprocess import PostprocessConfig
from medrefine.presets import BOX_ENGINES, PRESETS, get_preset
from medrefine.prompts import parse_box

logger = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "refine",
        help="refine masks made by another tool",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--image",
        type=Path,
        required=True,
        help="image file or DICOM series folder, or a folder of images",
    )
    parser.add_argument(
        "--mask",
        type=Path,
        help="the mask to refine, or a folder of masks named like the images",
    )
    parser.add_argument(
        "--box",
        action="append",
        type=parse_box_arg,
        metavar="X0,Y0,X1,Y1",
        help="instead of --mask: a box around one object, in pixels (repeat for several)",
    )
    parser.add_argument(
        "--boxes",
        type=Path,
        metavar="BOXES.json",
        help='instead of --mask: boxes for a folder of images, {"<image stem>": [[x0, y0, x1, '
        'y1], ...], ...} (a detector\'s output); images without an entry are reported',
    )
    parser.add_argument(
        "--box-engine",
        choices=["auto", *BOX_ENGINES],
        help="what turns the boxes into a mask: litemedsam (LiteMedSAM's mask, then refined and "
        "reviewed as a given mask), litemedsam-only (LiteMedSAM's mask kept; the refiner gives "
        "its uncertainty and review score), fuse (the probabilities of litemedsam and refiner "
        "averaged), refiner (the preset's coarse model inside the "
        "boxes, else the refiner from the boxes) or auto (default: the preset's engine, "
        "chosen on val)",
    )
    add_out_option(parser)
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="refine every image again, even those whose outputs are all in OUT already",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help=f"use this preset's refiner (default {DEFAULT_PRESET})",
    )
    group.add_argument(
        "--weights",
        type=Path,
        metavar="R.safetensors",
        help="diffusion refiner weights; post-processing then defaults to a plain 0.5 threshold",
    )
    add_device_option(parser)
    add_mask_options(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    started = datetime.now(UTC).isoformat(timespec="seconds")
    formats = parse_formats(args.format, refining=True)
    if sum(x is not None for x in (args.mask, args.box, args.boxes)) != 1:
        raise ConfigError("refine needs one of --mask M (a mask or a folder of masks), --box "
                          "x0,y0,x1,y1 (one per object) or --boxes BOXES.json")
    if args.box_engine is not None and args.mask is not None:
        raise ConfigError("--box-engine turns boxes into a mask; --mask gives the mask: drop "
                          "--box-engine, or prompt with --box/--boxes instead of --mask")
    if args.box is not None and args.image.is_dir() and not _is_series(args.image):
        raise ConfigError(f"--box prompts one image; {args.image} is a folder of images "
                          "(use --boxes BOXES.json)")
    if not args.image.exists():
        raise InputError(f"{args.image}: no such file or folder; check --image")
    check_writable(args.out)
    boxes_of: dict[Path, list] = {}
    if args.box is not None:
        pairs, problems = [(args.image, None)], []
        boxes_of[args.image] = args.box
    elif args.boxes is not None:
        pairs, problems, boxes_of = box_prompts(args.image, args.boxes)
    else:
        pairs, problems = find_mask_pairs(args.image, args.mask)
    stems = unique_stems([image for image, _ in pairs])
    refuse_replacing_inputs(pairs, stems, formats, args)
    jobs = [
        Job(image, stem, (mask, boxes_of.get(image)), {} if mask is None else {"mask": str(mask)})
        for (image, mask), stem in zip(pairs, stems, strict=True)
    ]
    quiet = getattr(args, "quiet", False)
    with open_batch(args.out, overwrite=args.overwrite, quiet=quiet, device=args.device) as batch:
        args.device = batch.device  # under torchrun on GPUs: this rank's GPU
        return _refine_pairs(args, batch, formats, jobs, problems, started)


def refuse_replacing_inputs(
    pairs: list[tuple[Path, Path | None]], stems: list[str], formats: list[str], args
) -> None:
    """Refuse (``OutputError``) outputs that would replace an image, a mask (``-o`` the
    image or the mask folder, masks named like the images), the boxes file or the weights,
    before the refiner is loaded."""
    reads = ReadFiles([args.image, args.mask, *option_files(args, "boxes", "weights")])
    outputs = [args.out / n for n in REPORTS]
    for (image, _), stem in zip(pairs, stems, strict=True):
        outputs.extend(args.out / n for n in planned_names(image, stem, formats))
    refuse_replacing_reads(outputs, reads, args.out)


def _refine_pairs(args, batch, formats, jobs, problems, started) -> int:
    """Refine each (image, mask or boxes) job into OUT and write the report."""
    pipe = _pipeline(args)
    box_engine = None if args.mask is not None else pipe.box_engine(args.box_engine or "auto")
    lite = None
    if box_engine in ("litemedsam", "litemedsam-only", "fuse"):
        # loaded before the images: a missing package is one line, not one per image
        from medrefine.litemedsam import load_litemedsam

        lite = load_litemedsam(args.device, quantized=pipe.backend.get("quantized", False))
    batch.add_problems(problems)
    prov = provenance(pipe, args)
    prov["coarse"] = "given masks (--mask)" if args.mask is not None else "boxes"
    if lite is not None:
        prov["litemedsam"] = lite.provenance()
    head = run_head(
        "refine",
        started,
        args.out,
        prov,
        world_size=batch.ranks.world_size,
        formats=formats,
        image=str(args.image),
        mask=None if args.mask is None else str(args.mask),
        boxes=str(args.boxes) if args.boxes else args.box,
        box_engine=box_engine,
    )
    task = RefineTask(pipe, args.out, formats, args.box_engine or "auto")
    report = batch.run(task, jobs, head)
    if batch.ranks.is_main:
        lead = f"refined {report['n_ok']} of {report['n_inputs']} masks into {args.out}"
        print(summary_line(report, lead))
    return batch.exit_code(report)


def _pipeline(args) -> SegmentationPipeline:
    """The refiner of ``--preset`` (with its coarse model when it has one) or ``--weights``,
    with the strength ``auto`` unless given."""
    preset = args.preset or DEFAULT_PRESET
    refiner_path = args.weights or get_preset(preset).fixer_weights
    base_post = get_preset(preset).postprocess if args.weights is None else PostprocessConfig()
    post = postprocess_config(args, base_post)
    refine = {"strength": "auto", **refine_overrides(args)}  # over each refiner's defaults
    if args.weights is None and get_preset(preset).refiner_weights.is_file():
        # a preset's full pipeline: boxes take its coarse model's mask inside each box where
        # it holds the object, refined as segment refines it (the refiner turns the other
        # boxes into masks); every given mask and box is compared with that model's own mask
        # for the review score's second opinion
        return SegmentationPipeline(preset=preset, device=args.device, refine=refine,
                                    postprocess=post)
    return SegmentationPipeline.for_refinement(
        refiner_path, preset=None if args.weights is not None else preset,
        device=args.device, refine=refine, postprocess=post,
    )


class RefineTask:
    """Refine each job's mask (``Job.data``: (mask path or None, boxes or None)) on its image
    (``Job.source``) and write the outputs into ``out_dir`` as ``<Job.stem>.*``."""

    name, unit = "refine", "image"
    columns = ["input", "mask", "status", "outputs", "seconds", "error", "changed_pixels", "rank"]
    weights = SegmentTask.weights

    def __init__(
        self, pipe: SegmentationPipeline, out_dir: Path, formats: list[str], box_engine: str
    ) -> None:
        self.pipe, self.out_dir, self.formats, self.box_engine = pipe, out_dir, formats, box_engine

    def outputs(self, job: Job) -> list[str]:
        return planned_names(Path(job.source), job.stem, self.formats)

    def make(self, job: Job, echo) -> dict[str, Any]:
        mask, boxes = job.data
        return refine_one(self.pipe, Path(job.source), mask, job.stem, self.out_dir,
                          self.formats, echo, boxes, box_engine=self.box_engine)  # fmt: skip


def parse_box_arg(text: str):
    try:
        return parse_box(text)
    except InputError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _is_series(folder: Path) -> bool:
    """A folder that ``folder_inputs`` reads as one DICOM series."""
    return folder_inputs(folder) == [folder]


def box_prompts(image: Path, boxes_file: Path
                ) -> tuple[list[tuple[Path, None]], list[tuple[str, str]], dict[Path, list]]:
    """Images of ``image`` (a file, series folder or folder of images) with their boxes from
    a JSON file ``{stem: [[x0, y0, x1, y1], ...]}``; images without boxes are problems."""
    try:
        table = json.loads(boxes_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{boxes_file}: cannot read the boxes ({err}); expected JSON "
                         '{"<image stem>": [[x0, y0, x1, y1], ...]}') from err
    if not isinstance(table, dict):
        raise InputError(f"{boxes_file}: expected a JSON object "
                         '{"<image stem>": [[x0, y0, x1, y1], ...]}')
    images = [p for p in folder_inputs(image) if p != image] if image.is_dir() and \
        not _is_series(image) else [image]
    pairs, problems, boxes_of = [], [], {}
    for path in images:
        entry = table.get(stem_of(path))
        if not entry:
            problems.append((str(path), f"no boxes for {stem_of(path)} in {boxes_file}"))
            continue
        if not isinstance(entry, list) or not all(isinstance(b, list) and len(b) == 4
                                                  for b in entry):
            problems.append((str(path), f"{boxes_file}: boxes of {stem_of(path)} must be a "
                             "list of [x0, y0, x1, y1]"))
            continue
        pairs.append((path, None))
        boxes_of[path] = entry
    return pairs, problems, boxes_of


def find_mask_pairs(
    image: Path, mask: Path
) -> tuple[list[tuple[Path, Path]], list[tuple[str, str]]]:
    """(image, mask) pairs and [(name, why it has no pair)].

    A file (or DICOM series folder) with a mask file is one pair; two folders pair by stem.
    """
    if not image.exists():
        raise InputError(f"{image}: no such file or folder; check --image")
    if not mask.exists():
        raise InputError(f"{mask}: no such file or folder; check --mask")
    if not mask.is_dir():
        return [(image, mask)], []  # a folder --image here is a DICOM series (one volume)
    if not image.is_dir():
        raise ConfigError(
            f"--mask {mask} is a folder but --image {image} is a file; give both "
            "as files, or both as folders to pair by stem"
        )
    masks = {
        stem_of(p): p
        for p in sorted(mask.iterdir())
        if p.is_file() and SUFFIX_FORMATS.get(full_suffix(p)) is not None
    }
    pairs, problems = [], []
    images = [p for p in folder_inputs(image) if p != image]
    if not images:
        raise InputError(f"{image}: folder holds no supported images to pair with {mask}")
    for path in images:
        if stem_of(path) in masks:
            pairs.append((path, masks.pop(stem_of(path))))
        else:
            problems.append((str(path), f"no mask named {stem_of(path)}.* in {mask}"))
    if masks:
        logger.warning(
            "%d masks in %s have no image (e.g. %s)",
            len(masks),
            mask,
            next(iter(masks.values())).name,
        )
    return pairs, problems


def refine_one(
    pipe: SegmentationPipeline,
    image_path: Path,
    mask_path: Path | None,
    stem: str,
    out_dir: Path,
    formats: list[str],
    echo,
    boxes: list | None = None,
    box_engine: str = "auto",
) -> dict[str, Any]:
    """Refine one mask (or turn ``boxes`` into one) and write the outputs; a failure is
    reported, not raised."""
    t0 = time.perf_counter()
    try:
        loaded = read_image(image_path)
        check_formats_fit(loaded, formats)
        if boxes is not None:
            result = pipe.run(loaded, boxes=boxes, box_engine=box_engine)
            written = write_outputs(result, out_dir, stem, formats)
            return result_record(image_path, result, written, t0, time.perf_counter(),
                                 {"boxes": [list(b) for b in boxes],
                                  "box_engine": result.params.get("box_engine"),
                                  "refinement": result.params.get("refinement"),
                                  "review": result.params.get("review")})
        labels = read_mask(mask_path, like=loaded)
        if not labels.any() or labels.all():
            raise InputError(
                f"{mask_path}: the mask is {'empty' if not labels.any() else 'all foreground'}"
                "; the refiner corrects a mask's outline and would invent one here: give a "
                "mask that marks the object, or prompt with --box")
        if int(labels.max(initial=0)) > 1:
            logger.warning(
                "%s: labels %s; refining their union as one foreground",
                mask_path,
                np.unique(labels[labels > 0]).tolist(),
            )
        result = pipe.run(loaded, coarse_mask=(labels > 0).astype(np.uint8))
        t_write = time.perf_counter()
        written = write_outputs(result, out_dir, stem, formats)
    except Exception as err:  # a batch goes on past a bad pair (KeyboardInterrupt still stops)
        return failure_record(image_path, err, t0, echo, mask=str(mask_path))
    changed = int(np.count_nonzero((labels > 0) != (result.mask > 0)))
    return result_record(
        image_path,
        result,
        written,
        t0,
        t_write,
        {"changed_pixels": changed, "refinement": result.params.get("refinement"),
         "review": result.params.get("review")},
        mask=str(mask_path),
    )
