"""Lung masks: from HU (threshold, components, outside air and airways removed) and, for 8-bit
slices without a provided mask, from the grey values (the rank mode).

HU recipe (after Hu et al., IEEE TMI 2001, simplified):
1. air-like voxels: HU < ``air_hu`` (-320);
2. outside-body air removed: per axial slice, the air components that touch the image border;
3. airways removed: the 3D component of voxels below ``airway_hu`` (-950) inside the body that
   reaches the most superior slice holding body air near the centre (the trachea), dilated by
   one voxel; in 2D, air components smaller than ``min_component_mm2`` (trachea, bowel gas);
4. gas removed: a component with more than ``gas_fraction`` of its voxels below ``gas_hu``
   (-970) and a median below -900 HU is bowel or stomach gas (lung parenchyma, even
   emphysematous, keeps its median above about -920 HU and few voxels near pure air);
5. in volumes, pockets smaller than ``large_component_ml`` that do not reach the scan's most
   superior slice are dropped too (bowel gas mixed with content escapes rule 4; a lung that
   small is a base cut by the scan's upper end, as in an abdominal CT);
6. the lungs: the largest remaining components, each at least ``component_ratio`` of the
   largest;
7. vessels, nodules and opacities inside the lung filled back: a closing of ``closing_mm`` and
   per-slice hole filling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from scipy import ndimage as ndi

from medrefine.errors import ConfigError, InputError


@dataclass(frozen=True)
class MaskConfig:
    air_hu: float = -320.0
    airway_hu: float = -950.0
    min_component_mm2: float = 400.0
    component_ratio: float = 0.1
    max_components: int = 2
    closing_mm: float = 4.0
    gas_hu: float = -970.0
    gas_fraction: float = 0.1
    large_component_ml: float = 30.0
    min_lung_ml: float = 0.5  # a volume whose lung mask is smaller has "no lung"
    # a volume whose lung is smaller is reported with partial_coverage: both lungs of an adult
    # hold 3-6 L at CT inspiration (a small child's about 1 L), so under 1 L the scan shows a
    # part of them and the percentages describe only that part
    full_lung_ml: float = 1000.0
    # lung on the first or last slice over this area: the scan range cuts the lung off
    cut_lung_mm2: float = 100.0
    min_lung_fraction_2d: float = 0.005  # the same for a single slice (share of the slice)

    def __post_init__(self):
        if not -1000 < self.air_hu < 0 or not -1024 <= self.airway_hu < self.air_hu:
            raise ConfigError(
                f"mask: need -1000 < air_hu < 0 and airway_hu < air_hu, got "
                f"{self.air_hu}, {self.airway_hu}"
            )
        if self.max_components < 1 or not 0 < self.component_ratio <= 1:
            raise ConfigError("mask: max_components >= 1 and 0 < component_ratio <= 1")


def hu_lung_mask(
    hu: np.ndarray, spacing: tuple[float, ...] | None, cfg: MaskConfig = MaskConfig()
) -> np.ndarray:
    """Lung mask of a CT in HU.

    Args:
        hu: (D, H, W) volume (D inferior -> superior, as ``read_image`` returns) or (H, W).
        spacing: mm per voxel in the same axis order; None is taken as 1 mm.
        cfg: thresholds and sizes.

    Returns:
        bool array of ``hu``'s shape.
    """
    volume = hu.ndim == 3
    hu3 = hu if volume else hu[None]
    sp = tuple(spacing) if spacing is not None else (1.0,) * hu.ndim
    sp3 = sp if volume else (1.0, *sp)
    air = hu3 < cfg.air_hu
    body_air = np.zeros_like(air)
    for d in range(air.shape[0]):  # outside air touches the in-plane border
        labels, n = ndi.label(air[d])
        if n == 0:
            continue
        border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        keep = np.ones(n + 1, bool)
        keep[border] = False
        keep[0] = False
        body_air[d] = keep[labels]
    if volume:
        body_air &= ~_airways(hu3, body_air, cfg)
    pixel_mm2 = sp3[1] * sp3[2]
    min_pixels = max(1, int(cfg.min_component_mm2 / pixel_mm2))
    if not volume:  # a slice: small air pockets (trachea, bowel gas) are not lung
        body_air[0] = _drop_small(body_air[0], min_pixels)
    labels, n = ndi.label(body_air)
    if n == 0:
        return np.zeros(hu.shape, bool)
    sizes = np.bincount(labels.ravel())[1:]
    flat = hu3.ravel()
    below = np.bincount(labels.ravel(), weights=(flat < cfg.gas_hu))[1:]
    for i in np.nonzero(below > cfg.gas_fraction * sizes)[0]:
        if np.median(flat[labels.ravel() == i + 1]) < -900:
            sizes[i] = 0  # gas
    if volume:  # small pockets low in the scan are bowel, not lung (see module docstring)
        voxel_ml = sp3[0] * sp3[1] * sp3[2] / 1000.0
        at_top = np.zeros(n + 1, bool)
        at_top[np.unique(labels[-1])] = True
        small = sizes * voxel_ml < cfg.large_component_ml
        sizes[small & ~at_top[1:]] = 0
    if not sizes.any():
        return np.zeros(hu.shape, bool)
    order = np.argsort(sizes)[::-1][: cfg.max_components]
    keep = [
        i + 1 for i in order if sizes[i] > 0 and sizes[i] >= cfg.component_ratio * sizes[order[0]]
    ]
    lung = np.isin(labels, keep)
    radius = [max(0, round(cfg.closing_mm / s)) for s in sp3[1:]]
    if max(radius) > 0:
        structure = _disc(radius).astype(np.uint8)
        pad = max(radius)
        for d in range(lung.shape[0]):
            if lung[d].any():  # padded so the closing does not stick to the image border
                padded = np.pad(lung[d].astype(np.uint8), pad)
                closed = cv2.morphologyEx(padded, cv2.MORPH_CLOSE, structure)
                lung[d] = closed[pad:-pad, pad:-pad] > 0
    for d in np.nonzero(lung.any(axis=(1, 2)))[0]:
        lung[d] = ndi.binary_fill_holes(lung[d])
    return lung if volume else lung[0]


def _airways(hu3: np.ndarray, body_air: np.ndarray, cfg: MaskConfig) -> np.ndarray:
    """The trachea and main bronchi: the very dark body-air component seen in the most
    superior slice that holds body air near the in-plane centre (dilated by one voxel)."""
    dark = body_air & (hu3 < cfg.airway_hu)
    depth, height, width = hu3.shape
    centre = np.zeros((height, width), bool)
    centre[height // 4 : 3 * height // 4, width // 3 : 2 * width // 3] = True
    top = None
    for d in range(depth - 1, -1, -1):
        if (body_air[d] & centre).any():
            top = d
            break
    if top is None or not (dark[top] & centre).any():
        return np.zeros_like(dark)
    # only when the top slice's central air is a small (tracheal) pocket, not lung apex, and
    # the slice is above the lungs (a scan that ends inside the chest has lung there)
    pocket = (body_air[top] & centre & dark[top]).sum()
    if (body_air[top] & centre).sum() > 0.05 * height * width or body_air[top].sum() > 3 * pocket:
        return np.zeros_like(dark)
    labels, _ = ndi.label(dark)
    ids = np.unique(labels[top][centre & dark[top]])
    ids = ids[ids > 0]
    airway = np.isin(labels, ids)
    if airway.sum() > 0.3 * body_air.sum():  # grew into the lungs (emphysema): do not trust it
        return np.zeros_like(dark)
    return ndi.binary_dilation(airway)


def _drop_small(mask: np.ndarray, min_pixels: int) -> np.ndarray:
    labels, n = ndi.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_pixels
    keep[0] = False
    return keep[labels]


def _disc(radius: list[int]) -> np.ndarray:
    ry, rx = radius
    yy, xx = np.mgrid[-ry : ry + 1, -rx : rx + 1]
    return (yy / max(ry, 1)) ** 2 + (xx / max(rx, 1)) ** 2 <= 1.0


def intensity_lung_mask(
    image: np.ndarray, closing_px: int = 5, air_level: float = 12.0, border_share: float = 0.15
) -> np.ndarray:
    """Lung mask of an 8-bit slice (H, W) without a provided one: dark regions below Otsu's
    threshold; outside air is a dark region that runs along at least ``border_share`` of the
    image border (it wraps round the body) or touches it and is black (median grey value below
    ``air_level``: air in a lung window). Lung-cropped slices (MedSeg) have lungs touching
    three borders, but along 1-11% of the border pixels only;
    small pockets dropped, then closed and filled."""
    from skimage.filters import threshold_otsu

    smooth = ndi.gaussian_filter(np.asarray(image, np.float32), 1.0)
    dark = smooth < threshold_otsu(smooth)
    labels, n = ndi.label(dark)
    if n == 0:
        return np.zeros(image.shape, bool)
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    share = np.bincount(border, minlength=n + 1) / border.size
    medians = ndi.median(smooth, labels, index=np.arange(1, n + 1))
    keep = np.ones(n + 1, bool)
    keep[0] = False
    for i in np.nonzero(share)[0]:
        if i and (share[i] >= border_share or medians[i - 1] < air_level):
            keep[i] = False  # wraps round the body, or black
    lung = _drop_small(keep[labels], max(1, int(0.01 * image.size)))
    r = closing_px
    lung = ndi.binary_closing(np.pad(lung, r), _disc([r, r]))[r:-r, r:-r]
    return ndi.binary_fill_holes(lung)


def lung_volume_ml(mask: np.ndarray, spacing: tuple[float, ...] | None) -> float | None:
    if spacing is None:
        return None
    return float(mask.sum()) * math.prod(spacing) / 1000.0


def lung_coverage(mask: np.ndarray, spacing, cfg: MaskConfig) -> dict[str, Any]:
    """How much of the lungs a volume shows: ``partial`` (and the ``reasons``) when its lung is
    under ``full_lung_ml`` or the scan range cuts it off (lung on the first or last slice over
    ``cut_lung_mm2``). A single slice is reported as that slice (``scope``)."""
    if mask.ndim != 3 or mask.shape[0] == 1:
        return {"scope": "single slice", "partial": False, "reasons": []}
    reasons = []
    ml = lung_volume_ml(mask, spacing)
    if ml is not None and ml < cfg.full_lung_ml:
        reasons.append(f"{ml:.1f} mL of lung, under the {cfg.full_lung_ml:g} mL of whole lungs")
    pixel_mm2 = float(spacing[-1]) * float(spacing[-2]) if spacing is not None else 1.0
    for end, z in (("first", 0), ("last", -1)):
        area = float(mask[z].sum()) * pixel_mm2
        if area > cfg.cut_lung_mm2:
            reasons.append(f"lung on the {end} slice ({area / 100:.1f} cm2): the scan cuts "
                           "it off")
    return {"scope": "volume", "partial": bool(reasons), "reasons": reasons,
            "rule": f"partial when under {cfg.full_lung_ml:g} mL of lung or lung on the "
                    f"first/last slice over {cfg.cut_lung_mm2:g} mm2"}


def check_has_lung(mask: np.ndarray, spacing, cfg: MaskConfig, name: str) -> None:
    """InputError (one line) when the lung mask is too small to be lung."""
    if mask.ndim == 3 and spacing is not None:
        ml = lung_volume_ml(mask, spacing)
        if ml < cfg.min_lung_ml:
            raise InputError(
                f"{name}: no lung found ({ml:.1f} mL of air inside the body, "
                f"under {cfg.min_lung_ml:g} mL); give a chest CT that shows the "
                "lungs"
            )
        return
    per_slice = mask.reshape(-1, *mask.shape[-2:]).mean(axis=(1, 2)).max()
    if per_slice < cfg.min_lung_fraction_2d:
        raise InputError(
            f"{name}: no lung found (lung mask covers {100 * per_slice:.1f}% of "
            f"the best slice, under {100 * cfg.min_lung_fraction_2d:g}%); give a "
            "chest CT that shows the lungs"
        )
