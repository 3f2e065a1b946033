"""``medrefine info FILE...``: show what medrefine reads from images, volumes and masks."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from medrefine.commands.options import add_series_option
from medrefine.errors import MedrefineError

# Meta keys shown for DICOM inputs, in this order.
_DICOM_KEYS = (
    "sop_class",
    "photometric",
    "transfer_syntax",
    "study_instance_uid",
    "series_instance_uid",
    "sop_instance_uids",
    "frame_of_reference_uid",
    "window_center",
    "window_width",
    "rescale_slope",
    "rescale_intercept",
    "inverted",
    "filled_slices",
)
_SEG_KEYS = (
    "segment_labels",
    "labels",
    "referenced_sop_instance_uids",
    "study_instance_uid",
    "series_instance_uid",
    "sop_instance_uids",
)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "info",
        help="show format, shape, spacing and value range of images, volumes and masks",
        description="Read each file (or DICOM series folder) as medrefine would and print what "
        "was found. DICOM-SEG files are read as masks.",
    )
    parser.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        type=Path,
        help="image, volume, DICOM series folder or DICOM-SEG",
    )
    parser.add_argument(
        "--json", action="store_true", help="print a JSON list, one object per file"
    )
    parser.add_argument(
        "--slice", type=int, default=None, help="describe only this slice (D index) of a volume"
    )
    add_series_option(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Describe every file; raise one ``MedrefineError`` at the end naming the bad ones."""
    reports, failures = [], []
    for path in args.files:
        try:
            reports.append(describe(path, slice_index=args.slice, allow_gaps=args.allow_gaps))
        except MedrefineError as err:
            failures.append(err)
            continue
        if not args.json:
            print(format_report(reports[-1]))
            if len(args.files) > 1:
                print()
    if args.json and reports:
        print(json.dumps(reports, indent=2))
    if len(failures) == 1 and len(args.files) == 1:
        raise failures[0]
    if failures:
        raise MedrefineError(
            f"{len(failures)} of {len(args.files)} files could not be read: "
            + "; ".join(str(err) for err in failures)
        )
    return 0


def describe(
    path: Path, *, slice_index: int | None = None, allow_gaps: bool = False
) -> dict[str, Any]:
    """A JSON-ready description of one input (image or DICOM-SEG mask); ``allow_gaps`` as in
    ``read_image``."""
    from medrefine.io import load_mask, read_image, sniff_format
    from medrefine.io.dicom import SEG_SOP_CLASS, open_dicom, sop_class_uid

    fmt = sniff_format(path)
    if fmt == "dicom" and sop_class_uid(open_dicom(path, stop_before_pixels=True)) == SEG_SOP_CLASS:
        loaded = load_mask(path)
        report = _common(path, loaded.meta, loaded.mask, loaded.spacing, channels=False)
        report.update({k: _jsonable(loaded.meta.get(k)) for k in _SEG_KEYS})
        return report
    image = read_image(path, slice=slice_index, allow_gaps=allow_gaps)
    report = _common(path, image.meta, image.array, image.spacing, channels=True)
    if image.meta.get("format") == "dicom":
        report.update({k: _jsonable(image.meta.get(k)) for k in _DICOM_KEYS})
    if image.meta.get("format") == "nifti":
        report["affine"] = _jsonable(image.meta["affine"])
        report["axcodes"] = image.meta.get("axcodes")
    return report


def _common(
    path: Path,
    meta: dict[str, Any],
    array: np.ndarray,
    spacing: tuple[float, ...] | None,
    *,
    channels: bool,
) -> dict[str, Any]:
    spatial = array.shape[1:] if channels else array.shape
    axes = ("C, " if channels else "") + ("D, H, W" if len(spatial) == 3 else "H, W")
    return {
        "path": str(path),
        "format": meta.get("format"),
        "shape": list(array.shape),
        "axes": axes,
        "source_dtype": meta.get("source_dtype"),
        "spacing": [round(float(s), 6) for s in spacing] if spacing is not None else None,
        "modality": meta.get("modality"),
        "min": float(array.min()),
        "max": float(array.max()),
        "frames": int(
            meta.get("number_of_frames")
            or meta.get("frames")
            or (spatial[0] if len(spatial) == 3 else 1)
        ),
        "slice": meta.get("slice"),
    }


def format_report(report: dict[str, Any]) -> str:
    """Human-readable lines, ``key: value``, skipping empty values."""
    lines = []
    width = max(len(k) for k in report)
    for key, value in report.items():
        if value is None or value == [] or value == {}:
            continue
        if key == "shape":
            value = f"{tuple(value)}  ({report['axes']})"
        elif key == "axes":
            continue
        elif key == "spacing":
            value = " x ".join(f"{s:g}" for s in value) + " mm"
        elif isinstance(value, list) and len(value) > 2 and key.endswith("uids"):
            value = f"{value[0]} ... ({len(value)} UIDs)"
        elif isinstance(value, float):
            value = f"{value:g}"
        lines.append(f"{key + ':':<{width + 2}}{value}")
    return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value
