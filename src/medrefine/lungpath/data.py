"""Training and evaluation slices: the 8-bit CT folders of ../shared/data with their fixed
manifest splits. A slice comes as (image01 in [-1, 1], lung mask, label map or None).

- ``covid_ct_lung_infection_ma``: lung masks provided (``masks_lung/``), infection in
  ``masks/`` (0/255 -> 1).
- ``medseg_covid_ct_infnet``: no lung masks; the rank mode's intensity mask
  (``lungmask.intensity_lung_mask``) stands in, ground-glass 1 and consolidation 2 in
  ``masks/``.
"""

from __future__ import annotations

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
