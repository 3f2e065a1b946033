"""Training and evaluation slices: the 8-bit CT folders of ../shared/data with their fixed
manifest splits. A slice comes as (image01 in [-1, 1], lung mask, label map or None).

- ``covid_ct_lung_infection_ma``: lung masks provided (``masks_lung/``), infection in
  ``masks/`` (0/255 -> 1).
- ``medseg_covid_ct_infnet``: no lung masks; the rank mode's intensity mask
  (``lungmask.intensity_lung_mask``) stands in, ground-glass 1 and consolidation 2 in
  ``masks/``.

3D patches need volumes: ``load_stacks`` rebuilds runs of neighbouring slices from a folder
whose ``manifest.json`` has ``grouping.groups`` ({group: [first_stem, last_stem, count]}, a
dict or the string of one). The Ma folder keeps every second slice of each volume, so
neighbouring kept stems of one group are neighbouring slices (two source slices apart); its
Radiopaedia groups are blocks that may hold more than one volume (the manifest says so), so
a few stacks there may cross a volume boundary. ``medseg_covid_ct_infnet`` (single slices
from many patients) has no groups and gives no stacks.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medrefine.io import read_image, read_mask
from medrefine.lungpath.hu import check_8bit, normalise_8bit
from medrefine.lungpath.lungmask import intensity_lung_mask
from medrefine.training.data import find_pairs, split_pairs


@dataclass
class Slice:
    stem: str
    image8: np.ndarray  # (H, W) float32 0..255
    lung: np.ndarray  # (H, W) bool
    labels: np.ndarray | None  # (H, W) uint8 (dataset's own classes) or None

    @property
    def image01(self) -> np.ndarray:
        return normalise_8bit(self.image8)


def load_slices(data_dir: str | Path, split: str, limit: int | None = None) -> list[Slice]:
    """The slices of one split, in manifest order."""
    data_dir = Path(data_dir)
    pairs = split_pairs(data_dir, find_pairs(data_dir))[split]
    lung_dir = data_dir / "masks_lung"
    out = []
    for pair in pairs[:limit]:
        image8 = check_8bit(read_image(pair.image))
        labels = read_mask(pair.mask).astype(np.uint8)
        lung_files = sorted(lung_dir.glob(f"{pair.stem}.*")) if lung_dir.is_dir() else []
        lung = (read_mask(lung_files[0]) > 0) if lung_files else intensity_lung_mask(image8)
        out.append(Slice(pair.stem, image8, lung, labels))
    return out


@dataclass
class SliceStack:
    """Neighbouring axial slices of one volume group, in z order."""

    group: str
    stems: list[str]
    image01: np.ndarray  # (D, H, W) float32 in [-1, 1]
    lung: np.ndarray  # (D, H, W) bool

    def __len__(self) -> int:
        return len(self.stems)


def volume_groups(data_dir: str | Path) -> dict[str, tuple[str, str]] | None:
    """{group: (first_stem, last_stem)} from the manifest's ``grouping.groups``, or None."""
    manifest = Path(data_dir) / "manifest.json"
    if not manifest.is_file():
        return None
    grouping = json.loads(manifest.read_text()).get("grouping")
    if isinstance(grouping, str):
        try:
            grouping = ast.literal_eval(grouping)
        except (ValueError, SyntaxError):
            return None
    groups = grouping.get("groups") if isinstance(grouping, dict) else None
    if not isinstance(groups, dict) or not groups:
        return None
    return {str(g): (str(v[0]), str(v[1])) for g, v in groups.items()}


def load_stacks(
    data_dir: str | Path, split: str, limit: int | None = None
) -> list[SliceStack] | None:
    """The split's slices (the first ``limit``, as ``load_slices``) as stacks of neighbours:
    a new stack starts at a new group or a gap (a stem between two kept ones is missing from
    the folder). None when the folder has no volume grouping."""
    groups = volume_groups(data_dir)
    if groups is None:
        return None
    position = {stem: i for i, stem in enumerate(sorted(find_pairs(data_dir)))}

    def group_of(stem: str) -> str | None:
        return next((g for g, (a, b) in groups.items() if a <= stem <= b), None)

    runs: list[tuple[str, list[Slice]]] = []
    for sl in sorted(load_slices(data_dir, split, limit), key=lambda s: s.stem):
        g = group_of(sl.stem)
        if g is None:
            continue
        prev = runs[-1][1][-1] if runs else None
        if prev is not None and runs[-1][0] == g and position[sl.stem] == position[prev.stem] + 1:
            runs[-1][1].append(sl)
        else:
            runs.append((g, [sl]))
    return [
        SliceStack(
            g,
            [x.stem for x in run],
            np.stack([x.image01 for x in run]),
            np.stack([x.lung for x in run]),
        )
        for g, run in runs
    ]
