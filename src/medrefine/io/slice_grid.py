"""Where the slices of a DICOM series lie along its normal, and the regular grid they belong on.

A series read as an evenly spaced stack is only right when its slices are evenly spaced. With
one slice missing, a stack of the others spreads the gap over the whole volume (slices near it
end up to half a spacing away from their true position) and every distance measured on it is
off. So a series whose spacing is not uniform is refused, or, when the caller allows gaps, put
on the regular grid of its smallest spacing: each slice at the plane of its true position, and
each plane with no slice of its own filled by linear interpolation between the two slices
around it and listed, so that nothing downstream mistakes it for measured data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Gaps within this share of the spacing count as equal: positions are stored as decimal text,
# and scanners round them (GE writes 0.625 mm slices with three decimals, some tools with one).
REL_TOL = 0.1


@dataclass(frozen=True)
class SliceGrid:
    """A regular grid along the slice normal and how the source slices fill it.

    Attributes:
        step: grid spacing in mm (the series' smallest spacing).
        z: (D,) plane positions along the normal, ascending, in mm.
        source: (D,) index of the source slice lying on each plane, -1 for a filled plane.
        lower, upper, weight: (D,) for a filled plane, the source slices around it and the
            weight of ``upper`` in the linear interpolation (planes with a slice: that slice
            twice, weight 0).
        nearest: (N,) the plane nearest each source slice (where a writer puts its result).
    """

    step: float
    z: np.ndarray
    source: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    weight: np.ndarray
    nearest: np.ndarray

    @property
    def depth(self) -> int:
        return int(len(self.z))

    @property
    def filled(self) -> list[int]:
        """D indices of the planes that no source slice lies on."""
        return [int(k) for k in np.flatnonzero(self.source < 0)]


def regular_step(gaps: np.ndarray) -> float:
    """The series' spacing: the median of the gaps within ``REL_TOL`` of the smallest one (so a
    missing slice, or a region scanned coarser, does not count, and rounding jitter does not
    pick a value that no two slices have)."""
    smallest = float(np.min(gaps))
    return float(np.median(gaps[gaps <= smallest * (1 + REL_TOL)]))


def uneven_gaps(z: np.ndarray) -> list[int]:
    """Indices i where the gap z[i+1] - z[i] is not the series' spacing (``z`` ascending)."""
    if len(z) < 3:
        return []
    gaps = np.diff(z)
    step = regular_step(gaps)
    return [int(i) for i in np.flatnonzero(np.abs(gaps - step) > REL_TOL * step)]


def describe_gaps(z: np.ndarray, paths: list[Path], folder: Path) -> str:
    """One line for the refusal: where the spacing breaks, and what an even stack would do."""
    gaps = np.diff(z)
    step = regular_step(gaps)
    uneven = uneven_gaps(z)
    parts = []
    for i in uneven[:3]:
        ratio = gaps[i] / step
        guess = (
            f"{round(ratio) - 1} slice(s) missing?"
            if round(ratio) >= 2 and abs(ratio - round(ratio)) <= REL_TOL
            else "uneven spacing"
        )
        parts.append(
            f"{gaps[i]:.4g} mm between {paths[i].name} (z {z[i]:.4g} mm) and "
            f"{paths[i + 1].name} (z {z[i + 1]:.4g} mm), {guess}"
        )
    if len(uneven) > 3:
        parts.append(f"and {len(uneven) - 3} more")
    even = z[0] + np.arange(len(z)) * (z[-1] - z[0]) / (len(z) - 1)
    off = float(np.max(np.abs(z - even)))
    return (
        f"{folder}: the slices of this series are not evenly spaced (spacing {step:.4g} mm; "
        + "; ".join(parts)
        + f"); read as an even stack, slices would sit up to {off:.3g} mm from their true "
        "position; rerun with --allow-gaps (read_image(..., allow_gaps=True)) to place every "
        "slice at its true position, with the missing planes filled and listed"
    )


def plan_grid(z: np.ndarray) -> SliceGrid:
    """The grid of spacing ``regular_step`` from z[0] up to the last slice (``z`` ascending).

    A slice within ``REL_TOL`` of a spacing from a plane lies on it; a plane with no slice is
    interpolated between the nearest slices below and above (past the last slice, which only an
    uneven spacing allows: that slice), so it is never a copy spread over several planes.
    """
    z = np.asarray(z, dtype=np.float64)
    step = regular_step(np.diff(z))
    depth = int(round((z[-1] - z[0]) / step)) + 1
    planes = z[0] + step * np.arange(depth)
    nearest = np.clip(np.round((z - z[0]) / step).astype(int), 0, depth - 1)
    source = np.full(depth, -1, dtype=int)
    on_plane = np.abs(planes[nearest] - z) <= REL_TOL * step
    source[nearest[on_plane]] = np.flatnonzero(on_plane)
    upper = np.clip(np.searchsorted(z, planes), 0, len(z) - 1)  # first slice at or above
    lower = np.clip(upper - 1, 0, len(z) - 1)
    span = z[upper] - z[lower]
    with np.errstate(divide="ignore", invalid="ignore"):
        weight = np.where(span > 0, (planes - z[lower]) / span, 0.0)
    weight = np.clip(weight, 0.0, 1.0)
    placed = source >= 0
    lower[placed], upper[placed], weight[placed] = source[placed], source[placed], 0.0
    return SliceGrid(step, planes, source, lower, upper, weight, nearest)


def resample(array: np.ndarray, grid: SliceGrid) -> np.ndarray:
    """(C, N, H, W) source slices -> (C, D, H, W) on ``grid``; placed slices copied exactly."""
    out = np.empty((array.shape[0], grid.depth, *array.shape[2:]), np.float32)
    for k in range(grid.depth):
        if grid.source[k] >= 0:
            out[:, k] = array[:, grid.source[k]]
        else:
            w = np.float32(grid.weight[k])
            out[:, k] = (1 - w) * array[:, grid.lower[k]] + w * array[:, grid.upper[k]]
    return out


def grid_positions(positions: np.ndarray, z: np.ndarray, grid: SliceGrid) -> np.ndarray:
    """(D, 3) ImagePositionPatient of the planes, interpolated from the slices' (N, 3)."""
    return np.stack([np.interp(grid.z, z, positions[:, a]) for a in range(3)], axis=1)
