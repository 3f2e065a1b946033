"""What ``medrefine lung-pathology`` writes for one input: the label map (NIfTI or PNG, the
input's grid and geometry), a DICOM-SEG with one segment per class, an overlay montage and
``<stem>.json`` (classes with voxels, mL and fraction of lung). Every file is written
atomically by the ``medrefine.io`` writers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from medrefine import __version__
from medrefine.io import OUTPUT_FORMATS
from medrefine.lungpath.labels import CLASS_NAMES, COLOURS, DISPLAY_NAMES, LABELS

FORMATS = ("nifti", "png", "dicom-seg", "overlay", "json")  # of ``OUTPUT_FORMATS``
DEFAULT_FORMATS = "nifti,overlay,json"
MONTAGE_TILES = 12
TILE = 256


def output_name(stem: str, fmt: str) -> str:
    """The file ``fmt`` writes for ``stem`` (the label maps are named as the CLI's masks)."""
    if fmt not in FORMATS:
        raise KeyError(fmt)
    return OUTPUT_FORMATS[fmt].file_names(stem)[0]


def display01(result) -> np.ndarray:
    """The input in a lung window as [0, 1], (H, W) or (D, H, W)."""
    array = result.image.array
    grey = array.mean(axis=0) if array.shape[0] in (3, 4) else array[0]
    if result.params.get("intensity") == "hu":
        return np.clip((grey + 1000.0) / 1400.0, 0, 1)  # window -1000..400 HU
    return np.clip(grey / 255.0, 0, 1)


def colour_slice(grey: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """uint8 RGB (H, W, 3): a uint8 (H, W) slice with each class of ``labels`` (H, W) blended
    in its colour (alpha 0.45), as the montage and the web page show it."""
    out = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
    for value, colour in COLOURS.items():
        sel = labels == value
        out[sel] = 0.55 * out[sel] + 0.45 * np.asarray(colour, np.float32)
    return out.astype(np.uint8)


def montage(result, tiles: int = MONTAGE_TILES) -> np.ndarray:
    """uint8 RGB: up to ``tiles`` axial slices through the lung (evenly spaced), each labelled
    in colour (alpha 0.45), with a legend row."""
    image01 = display01(result)
    labels = result.labels
    if labels.ndim == 2:
        image01, labels = image01[None], labels[None]
    with_lung = np.nonzero((labels > 0).any(axis=(1, 2)))[0]
    picks = with_lung if len(with_lung) else np.arange(len(labels))
    picks = picks[
        np.unique(np.linspace(0, len(picks) - 1, min(tiles, len(picks))).round().astype(int))
    ]
    panels = []
    for d in picks[::-1]:  # superior first
        out = colour_slice((image01[d] * 255).astype(np.uint8), labels[d])
        h, w = out.shape[:2]
        f = TILE / max(h, w)
        out = cv2.resize(
            out, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_NEAREST
        )
        tile = np.zeros((TILE, TILE, 3), np.uint8)
        tile[: out.shape[0], : out.shape[1]] = out
        cv2.putText(tile, f"z{d}", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
        panels.append(tile)
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    grid = np.zeros((rows * TILE, cols * TILE, 3), np.uint8)
    for i, tile in enumerate(panels):
        r, c = divmod(i, cols)
        grid[r * TILE : (r + 1) * TILE, c * TILE : (c + 1) * TILE] = tile
    legend = np.zeros((22, grid.shape[1], 3), np.uint8)
    x = 4
    for name in CLASS_NAMES:
        colour = COLOURS[LABELS[name]]
        cv2.rectangle(legend, (x, 5), (x + 12, 17), colour, -1)
        text = DISPLAY_NAMES[name]
        cv2.putText(legend, text, (x + 16, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
        x += 24 + 7 * len(text)
    return np.concatenate([grid, legend[:, : grid.shape[1]]], axis=0)


def series_description(result) -> str:
    """The DICOM-SEG's SeriesDescription (64 characters at most): says partial coverage."""
    if result.partial_coverage:
        return "medrefine lung pathology (unsupervised; partial lung coverage)"
    return "medrefine lung pathology (unsupervised)"


def coverage_warning(result, name: str) -> str | None:
    """One line for stderr when the input shows only part of the lungs, else None."""
    if not result.partial_coverage:
        return None
    return (f"{name}: warning: partial lung coverage ({'; '.join(result.coverage['reasons'])}); "
            "the percentages describe only the lung in the scan")


def summary(result, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """``<stem>.json``: the classes read like a CT severity report."""
    image = result.image
    spacing = [float(s) for s in image.spacing] if image.spacing is not None else None
    healthy = result.classes["healthy"]["fraction_of_lung"]
    return {
        "input": str(image.path) if image.path is not None else None,
        "format": image.meta.get("format"),
        "shape": list(result.labels.shape),
        "spacing_mm": spacing,
        "intensity": result.params.get("intensity"),
        "labels": {str(v): k for k, v in LABELS.items()},
        "lung_voxels": int((result.labels > 0).sum()),
        "lung_ml": result.lung_ml,
        "classes": result.classes,
        "abnormal_fraction_of_lung": 1.0 - healthy if result.lung_ml != 0 else 0.0,
        # the percentages describe the lung in the scan: with partial coverage, only a part
        "partial_coverage": result.partial_coverage,
        "coverage": result.coverage,
        "clusters": [
            {
                "label": CLASS_NAMES[v - 1],
                "median_local_mean": s[0],
                "median_local_spread": s[1],
                "median_laa_share": s[2],
            }
            for v, s in zip(result.cluster_labels, result.cluster_stats, strict=False)
        ],
        "timings": result.timings,
        "params": result.params,
        "medrefine_version": __version__,
        "note": "unsupervised research output (DiffSegLung method); not for diagnosis",
        **(extra or {}),
    }


def write_result(
    result, out_dir: Path, stem: str, formats: list[str], extra: dict[str, Any] | None = None
) -> list[Path]:
    """Write the requested formats (DICOM-SEG only for DICOM inputs); returns the paths."""
    image = result.image
    written = []
    for fmt in formats:
        spec = OUTPUT_FORMATS[fmt]
        path = out_dir / output_name(stem, fmt)
        if spec.holds_mask:
            if not spec.fits(image.meta.get("format")):  # DICOM-SEG of a DICOM input only
                continue
            written.append(
                spec.write(
                    result.labels,
                    path,
                    like=image,
                    label_names=[DISPLAY_NAMES[n] for n in CLASS_NAMES],
                    algorithm_name="medrefine-lungpath",
                    series_description=series_description(result),
                )
            )
        elif fmt == "overlay":
            written.append(spec.write(montage(result), path))
        elif fmt == "json":
            written.append(spec.write(summary(result, extra), path))
    return written
