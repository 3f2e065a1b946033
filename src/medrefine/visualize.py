"""Pictures of results: overlays, contours, uncertainty heat maps, side-by-side panels, curves.

Everything returns ``uint8`` RGB arrays ``(H, W, 3)`` and works on 2D images; for a volume, pass
one slice. Inputs are either ``image01`` (float, channel-first ``(H, W)``, ``(1, H, W)`` or
``(3, H, W)`` with values in [0, 1]) or an RGB picture already made here (``uint8 (H, W, 3)``),
so the functions compose: ``contours(overlay(image01, gt), [coarse, refined])``.

Matplotlib is used only through ``matplotlib.figure.Figure`` with the Agg canvas (no pyplot,
no global figure state, no window), so it is safe in servers and threads. Files are written to a
temporary name in the target folder and renamed into place, so a crash leaves no half PNG.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import cv2
import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from medrefine.errors import InputError
from medrefine.io.base import atomic_output

logger = logging.getLogger(__name__)

RGB = tuple[int, int, int]

# Distinguishable on grey medical images (and for red-green colour blindness: Okabe-Ito).
PALETTE: tuple[RGB, ...] = (
    (230, 159, 0),  # orange
    (86, 180, 233),  # sky blue
    (0, 158, 115),  # bluish green
    (240, 228, 66),  # yellow
    (213, 94, 0),  # vermillion
    (204, 121, 167),  # reddish purple
)
PERCEPTUAL_CMAPS = ("magma", "inferno", "viridis", "plasma", "cividis")


def overlay(
    image: np.ndarray, mask: np.ndarray, color: RGB = (230, 159, 0), alpha: float = 0.4
) -> np.ndarray:
    """Tint the pixels of ``mask`` with ``color``.

    Args:
        image: ``image01`` (H, W), (1, H, W) or (3, H, W) in [0, 1], or uint8 RGB (H, W, 3).
        mask: binary mask (H, W), bool or 0/1.
        color: RGB colour, 0-255 per channel.
        alpha: colour weight in [0, 1] inside the mask; outside the mask the image is unchanged.

    Returns:
        uint8 RGB (H, W, 3).
    """
    rgb = _as_rgb_uint8(image)
    mask = _check_mask(mask, rgb.shape[:2])
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must lie in [0, 1], got {alpha}")
    color_arr = np.asarray(_check_color(color), dtype=np.float32)
    out = rgb.copy()
    blended = (1.0 - alpha) * rgb[mask].astype(np.float32) + alpha * color_arr  # (N, 3)
    out[mask] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return out


def contours(
    image: np.ndarray,
    masks: Sequence[np.ndarray],
    colors: Sequence[RGB] | None = None,
    thickness: int = 1,
) -> np.ndarray:
    """Draw the outlines of several masks on one image (e.g. coarse vs refined).

    Outer boundaries and hole boundaries are both drawn (``cv2.RETR_LIST``), later masks on top.

    Args:
        image: ``image01`` (H, W), (1, H, W) or (3, H, W) in [0, 1], or uint8 RGB (H, W, 3).
        masks: binary masks (H, W).
        colors: one RGB colour per mask; None = ``PALETTE`` in order.
        thickness: line width in pixels (>= 1).

    Returns:
        uint8 RGB (H, W, 3).
    """
    rgb = np.ascontiguousarray(_as_rgb_uint8(image).copy())
    if colors is None:
        colors = [PALETTE[i % len(PALETTE)] for i in range(len(masks))]
    if len(colors) != len(masks):
        raise InputError(
            f"contours got {len(masks)} masks but {len(colors)} colours; pass one colour per mask"
        )
    if thickness < 1:
        raise InputError(f"thickness must be >= 1 pixel, got {thickness}")
    for mask, color in zip(masks, colors, strict=True):
        mask_u8 = _check_mask(mask, rgb.shape[:2]).astype(np.uint8)
        outlines, _ = cv2.findContours(mask_u8, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(rgb, outlines, -1, tuple(int(c) for c in _check_color(color)), thickness)
    return rgb


def uncertainty_heatmap(
    uncertainty: np.ndarray,
    image: np.ndarray | None = None,
    vmin: float = 0.0,
    vmax: float | None = None,
    cmap: str = "magma",
    alpha: float = 0.6,
) -> np.ndarray:
    """Colour an uncertainty map with a perceptually uniform colormap.

    Values are scaled linearly from [vmin, vmax] to the colormap and clipped. Fix ``vmax`` to
    compare images (e.g. 0.5, the largest std of values in [0, 1], or ln 2 for binary entropy);
    None uses this map's maximum, which makes every map look equally uncertain.

    Args:
        uncertainty: float (H, W), e.g. the per-pixel std over refinement samples.
        image: optional ``image01``/RGB to blend under the heat map (shown in grey).
        vmin, vmax: value range mapped to the colormap ends.
        cmap: one of ``PERCEPTUAL_CMAPS``.
        alpha: heat-map weight when blending over ``image``.

    Returns:
        uint8 RGB (H, W, 3).
    """
    uncertainty = np.asarray(uncertainty, dtype=np.float32)
    if uncertainty.ndim != 2 or uncertainty.size == 0:
        raise InputError(
            f"uncertainty must be a non-empty (H, W) map, got shape {uncertainty.shape}; "
            "take one slice/channel first"
        )
    if not np.isfinite(uncertainty).all():
        raise InputError("uncertainty contains NaN or inf; check the sampler output")
    if cmap not in PERCEPTUAL_CMAPS:
        raise InputError(f"cmap must be one of {PERCEPTUAL_CMAPS}, got {cmap!r}")
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must lie in [0, 1], got {alpha}")
    high = float(uncertainty.max()) if vmax is None else float(vmax)
    if high <= vmin:
        high = vmin + 1e-6  # a constant map: everything at the low end of the colormap
    scaled = np.clip((uncertainty - vmin) / (high - vmin), 0.0, 1.0)
    heat = matplotlib.colormaps[cmap](scaled)[..., :3]  # (H, W, 3) floats in [0, 1]
    if image is not None:
        grey = _as_rgb_uint8(image).astype(np.float32).mean(axis=-1, keepdims=True) / 255.0
        if grey.shape[:2] != heat.shape[:2]:
            raise InputError(
                f"image {grey.shape[:2]} and uncertainty {heat.shape[:2]} differ in size"
            )
        heat = (1.0 - alpha) * grey + alpha * heat
    return np.clip(np.rint(heat * 255.0), 0, 255).astype(np.uint8)


def comparison_panel(
    image: np.ndarray,
    panels: Mapping[str, np.ndarray],
    colors: Mapping[str, RGB] | None = None,
    image_title: str | None = "image",
    alpha: float = 0.4,
    gap: int = 4,
    title_height: int = 24,
) -> np.ndarray:
    """Side-by-side tiles with titles, e.g. "image | coarse | refined | ground truth".

    Args:
        image: ``image01`` (H, W), (1, H, W) or (3, H, W), or uint8 RGB (H, W, 3).
        panels: title -> binary mask (H, W) (shown as an overlay on ``image``) or uint8 RGB
            (H, W, 3) (shown as is, e.g. from ``uncertainty_heatmap``), in display order.
        colors: overlay colour per title; missing titles take ``PALETTE`` colours in order.
        image_title: title of a first tile showing the plain image; None = no such tile.
        alpha: overlay colour weight.
        gap: white pixels between tiles.
        title_height: height in pixels of the title bar above each tile.

    Returns:
        uint8 RGB (title_height + H, n * W + (n - 1) * gap, 3).
    """
    rgb = _as_rgb_uint8(image)
    height, width = rgb.shape[:2]
    colors = dict(colors or {})
    tiles: list[tuple[str, np.ndarray]] = []
    if image_title is not None:
        tiles.append((image_title, rgb))
    for i, (title, panel) in enumerate(panels.items()):
        panel = np.asarray(panel)
        if panel.ndim == 3 and panel.shape[-1] == 3 and panel.dtype == np.uint8:
            if panel.shape[:2] != (height, width):
                raise InputError(
                    f"panel {title!r} has shape {panel.shape}, expected ({height}, {width}, 3)"
                )
            tiles.append((title, panel))
        else:
            color = colors.get(title, PALETTE[i % len(PALETTE)])
            tiles.append((title, overlay(rgb, panel, color=color, alpha=alpha)))
    if not tiles:
        raise InputError("comparison_panel needs at least one panel or an image_title")
    if gap < 0 or title_height < 0:
        raise InputError(f"gap and title_height must be >= 0, got {gap} and {title_height}")

    n = len(tiles)
    canvas = np.full((title_height + height, n * width + (n - 1) * gap, 3), 255, np.uint8)
    for i, (title, tile) in enumerate(tiles):
        x0 = i * (width + gap)
        canvas[title_height:, x0 : x0 + width] = tile
        if title_height > 0:
            _put_title(canvas, title, x0, width, title_height)
    return canvas


def save_png(rgb: np.ndarray, path: str | Path, compress_level: int = 6) -> Path:
    """Write a uint8 RGB (H, W, 3) or grey (H, W) array as PNG, atomically.

    ``compress_level`` (0-9, zlib's): 1 writes a 512-px RGB picture in about a sixth of the
    time 6 takes, for files about 15% larger (the web app's downloads).

    The data go to a temporary file in the target folder, which is then renamed over ``path``
    (``os.replace``), so readers never see a half-written file. Missing folders are created.

    Returns:
        The path written.
    """
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or not (rgb.ndim == 2 or (rgb.ndim == 3 and rgb.shape[-1] == 3)):
        raise InputError(
            f"save_png needs uint8 (H, W, 3) or (H, W), got {rgb.dtype} {rgb.shape}; use the "
            "functions of this module to make the picture"
        )
    path = Path(path)
    picture = Image.fromarray(np.ascontiguousarray(rgb))
    _atomic_write(path, lambda tmp: picture.save(tmp, format="PNG",
                                                 compress_level=compress_level))
    return path


def training_curve_png(
    history: Sequence[Mapping[str, float]],
    path: str | Path,
    keys: Sequence[str] = ("train_loss", "val_dice"),
) -> Path:
    """Plot metrics over epochs, one subplot per key, and save as PNG (atomically).

    Args:
        history: one dict per epoch (e.g. the lines of a metrics JSONL log); the x value is
            ``row["epoch"]`` when present, else the row index. Rows without a key are skipped
            for that key (validation may run every few epochs).
        path: output PNG.
        keys: metrics to plot.

    Returns:
        The path written.
    """
    series = {}
    for key in keys:
        points = [
            (float(row.get("epoch", i)), float(row[key]))
            for i, row in enumerate(history)
            if key in row and row[key] is not None
        ]
        if points:
            series[key] = points
    if not series:
        available = sorted({k for row in history for k in row})
        raise InputError(
            f"history has no values for keys {list(keys)}; available keys: {available}"
        )
    fig = Figure(figsize=(4.0 * len(series), 3.0), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    for ax, (key, points) in zip(
        fig.subplots(1, len(series), squeeze=False)[0], series.items(), strict=True
    ):
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, marker="o" if len(points) < 30 else None, markersize=3)
        ax.set_title(key)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    path = Path(path)
    _atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    return path


# --- internals ---------------------------------------------------------------------------------


def _atomic_write(path: Path, write: Callable[[str], object]) -> None:
    """Call ``write(tmp_path)`` for a temp file beside ``path``, then rename it to ``path``:
    ``atomic_output``'s, so a picture gets the mode every other output gets from the umask
    (``mkstemp`` would make it 0600)."""
    with atomic_output(path) as tmp:
        write(str(tmp))


def _put_title(canvas: np.ndarray, title: str, x0: int, width: int, bar_height: int) -> None:
    """Centre ``title`` in the bar above a tile, shrinking the font until it fits."""
    font = cv2.FONT_HERSHEY_SIMPLEX
    scale = bar_height / 40.0
    (text_w, text_h), _ = cv2.getTextSize(title, font, scale, 1)
    while text_w > width - 4 and scale > 0.2:
        scale *= 0.9
        (text_w, text_h), _ = cv2.getTextSize(title, font, scale, 1)
    x = x0 + max((width - text_w) // 2, 0)
    y = (bar_height + text_h) // 2
    cv2.putText(canvas, title, (x, y), font, scale, (0, 0, 0), 1, cv2.LINE_AA)


def _as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """``image01`` (H, W)/(1, H, W)/(3, H, W) in [0, 1], or uint8 (H, W, 3) -> uint8 (H, W, 3)."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        if image.ndim == 3 and image.shape[-1] == 3:
            return image
        raise InputError(
            f"a uint8 image must be RGB (H, W, 3), got shape {image.shape}; pass float image01 "
            "(C, H, W) in [0, 1] otherwise"
        )
    if not np.issubdtype(image.dtype, np.floating):
        raise InputError(f"image must be float image01 or uint8 RGB, got dtype {image.dtype}")
    if image.ndim == 3 and image.shape[0] in (1, 3):
        image = np.moveaxis(image, 0, -1)  # (H, W, C)
    elif image.ndim == 2:
        image = image[..., None]
    else:
        raise InputError(
            f"image01 must be (H, W), (1, H, W) or (3, H, W), got shape {image.shape}; "
            "for a volume pass one slice"
        )
    if image.size == 0 or not np.isfinite(image).all():
        raise InputError(f"image01 must be non-empty and finite, got shape {image.shape}")
    low, high = float(image.min()), float(image.max())
    if low < -1e-3 or high > 1.0 + 1e-3:
        raise InputError(
            f"image01 must lie in [0, 1], got values in [{low:g}, {high:g}]; normalise it with "
            "medrefine.preprocess first"
        )
    image = np.broadcast_to(image, (*image.shape[:2], 3))
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def _check_mask(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A binary (H, W) mask of the given shape as bool."""
    mask = np.asarray(mask)
    if mask.shape != tuple(shape):
        raise InputError(
            f"mask has shape {mask.shape}, expected {tuple(shape)} to match the image; for a "
            "volume pass one slice"
        )
    if mask.dtype != bool and np.any((mask != 0) & (mask != 1)):
        raise InputError(
            f"mask must be bool or 0/1, got values {np.unique(mask)[:5]}; use mask > 0 for "
            "0/255 masks"
        )
    return mask.astype(bool, copy=False)


def _check_color(color: Sequence[int]) -> tuple[int, int, int]:
    if len(color) != 3 or not all(0 <= int(c) <= 255 for c in color):
        raise InputError(f"colour must be three values in 0-255 (RGB), got {color!r}")
    return int(color[0]), int(color[1]), int(color[2])
