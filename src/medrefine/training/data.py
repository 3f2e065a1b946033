"""Training data: a folder with ``images/`` and ``masks/`` paired by file stem, split by the
folder's ``manifest.json`` when it has one (else a seeded 80/10/10 split), cached in memory on
a slightly larger grid than the model's so augmentations can crop and rescale."""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from medrefine.errors import ConfigError, InputError
from medrefine.io import read_image, read_mask, stem_of
from medrefine.preprocess import PreprocessConfig, preprocess

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".nii", ".nii.gz")


@dataclass(frozen=True)
class Pair:
    """An image and its mask file; with a layered ``mask_dir`` (``a+b``) a tuple of binary
    mask files, one per label (``read_layers``)."""

    stem: str
    image: Path
    mask: Path | tuple[Path, ...]

    @property
    def files(self) -> tuple[Path, ...]:
        """Every file the pair reads."""
        return (self.image, *(self.mask if isinstance(self.mask, tuple) else (self.mask,)))


def mask_layers(mask_dir: str) -> list[str]:
    """``masks`` -> [masks]; ``masks_lung+masks`` -> [masks_lung, masks]: a label map stacked
    from binary mask folders, label k where the k-th folder's mask is set (later on top)."""
    layers = [d.strip() for d in str(mask_dir).split("+")]
    if not all(layers) or len(set(layers)) != len(layers):
        raise ConfigError(f"mask_dir {mask_dir!r}: give one folder or distinct folders joined "
                          "by '+' (e.g. masks_lung+masks)")
    return layers


def find_pairs(data_dir: str | Path, mask_dir: str = "masks") -> dict[str, Pair]:
    """Pair ``images/<stem>.*`` with ``<mask_dir>/<stem>.*`` (with every layer's
    ``<layer>/<stem>.*`` for a layered ``mask_dir``, see ``mask_layers``)."""
    root = Path(data_dir)
    layers = mask_layers(mask_dir)
    images = root / "images"
    for d in (images, *(root / layer for layer in layers)):
        if not d.is_dir():
            raise InputError(f"{root}: expected sub-folders images/ and {'/, '.join(layers)}/; "
                             f"{d} is missing")

    def index(folder: Path) -> dict[str, Path]:
        return {stem_of(p): p for p in sorted(folder.iterdir())
                if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES)}

    imgs = index(images)
    msks = [index(root / layer) for layer in layers]
    complete = set(imgs).intersection(*msks)
    missing = sorted(set(imgs) - complete)
    if missing:
        logger.warning("%d images have no mask and are skipped (e.g. %s)", len(missing), missing[0])

    def mask_of(stem: str) -> Path | tuple[Path, ...]:
        return msks[0][stem] if len(msks) == 1 else tuple(m[stem] for m in msks)

    pairs = {s: Pair(s, imgs[s], mask_of(s)) for s in sorted(imgs) if s in complete}
    if not pairs:
        raise InputError(f"{root}: no image/mask pairs with matching stems found")
    return pairs


def read_layers(paths: tuple[Path, ...], like=None) -> np.ndarray:
    """A label map (H, W) uint8 stacked from binary mask files: label k where the k-th file's
    mask is set, later files on top (``like``: the image the masks must fit)."""
    from medrefine.io import read_mask

    labels = None
    for k, path in enumerate(paths, start=1):
        layer = read_mask(path, like=like) > 0
        if labels is None:
            labels = np.zeros(layer.shape, np.uint8)
        elif layer.shape != labels.shape:
            raise InputError(f"{path}: mask size {layer.shape} differs from {paths[0]}'s "
                             f"{labels.shape}; the layers of a case must have one size")
        labels[layer] = k
    return labels


def reference_labels(case: Pair, like) -> np.ndarray:
    """The case's mask as it is stored (a label map), or stacked from its layers, on the grid
    of ``like`` (the case's loaded image)."""
    if isinstance(case.mask, tuple):
        return read_layers(case.mask, like=like)
    return read_mask(case.mask, like=like)


def reference(case: Pair, like, mask_labels: tuple[int, ...] = ()) -> np.ndarray:
    """The case's reference foreground: any non-zero label, or the labels ``mask_labels``."""
    labels = reference_labels(case, like)
    return np.isin(np.rint(labels), mask_labels) if mask_labels else labels > 0


def split_pairs(data_dir: str | Path, pairs: dict[str, Pair], seed: int = 0
                ) -> dict[str, list[Pair]]:
    """train/val/test lists: the manifest's fixed split if present, else seeded 80/10/10."""
    manifest = Path(data_dir) / "manifest.json"
    if manifest.is_file():
        split = json.loads(manifest.read_text()).get("split")
        if split:
            out = {k: [pairs[s] for s in split.get(k, []) if s in pairs]
                   for k in ("train", "val", "test")}
            logger.info("split from %s: %s", manifest,
                        {k: len(v) for k, v in out.items()})
            return out
    stems = sorted(pairs)
    random.Random(seed).shuffle(stems)
    n = len(stems)
    n_val, n_test = max(1, round(0.1 * n)), max(1, round(0.1 * n))
    if n < 3:
        raise InputError(f"{data_dir}: need at least 3 image/mask pairs, found {n}")
    test, val, train = stems[:n_test], stems[n_test:n_test + n_val], stems[n_test + n_val:]
    return {"train": [pairs[s] for s in train], "val": [pairs[s] for s in val],
            "test": [pairs[s] for s in test]}


def cross_val_folds(pairs: list[Pair], k: int, seed: int = 0) -> dict[str, int]:
    """Fold (0..k-1) of each pair's stem: a seeded shuffle of the sorted stems dealt out in
    turn, so fold sizes differ by at most one and do not depend on the order of ``pairs``."""
    if k < 2:
        raise ConfigError(f"cross-validation needs at least 2 folds, got {k}")
    stems = sorted(p.stem for p in pairs)
    if len(stems) < k:
        raise ConfigError(f"{len(stems)} training cases cannot be split into {k} folds")
    order = np.random.default_rng(seed).permutation(len(stems))
    return {stems[j]: i % k for i, j in enumerate(order)}


def cases_digest(pairs: list[Pair]) -> str:
    """A short fingerprint of a list of cases (their sorted stems)."""
    return hashlib.sha256("\n".join(sorted(p.stem for p in pairs)).encode()).hexdigest()[:16]


def read_label_map(path: Path | tuple[Path, ...], num_classes: int,
                   mask_labels: tuple[int, ...] = ()) -> np.ndarray:
    """A mask file as uint8 labels (H, W): binary masks map >127 to 1; multi-class masks keep
    their label values; values above ``num_classes`` become 255 (ignored in the loss).
    ``mask_labels`` (binary models): the foreground is these label values of a label map
    (e.g. one class of ``masks_multiclass``), everything else background."""
    if isinstance(path, tuple):  # a layered mask: its labels are 1..len(path)
        labels = read_layers(path)
        if mask_labels:
            return np.isin(labels, mask_labels).astype(np.uint8)
        if num_classes == 1:
            return (labels > 0).astype(np.uint8)
        labels[labels > num_classes] = 255
        return labels
    loaded = read_image(path)
    mask = loaded.array
    if mask.ndim != 3:
        raise InputError(f"{path}: a 2D mask was expected, got shape {mask.shape}")
    mask = mask[0] if mask.shape[0] in (1, 2) else mask[:3].max(0)
    if mask_labels:
        return np.isin(np.rint(mask), mask_labels).astype(np.uint8)
    if num_classes == 1:
        return (mask > (127 if mask.max() > 1 else 0)).astype(np.uint8)
    labels = np.rint(mask).astype(np.int64)
    labels[labels > num_classes] = 255
    return labels.astype(np.uint8)


def load_pair(pair: Pair, pre: PreprocessConfig, num_classes: int, size: tuple[int, int],
              mask_labels: tuple[int, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    """(image01 (C, *size) float16, labels (*size) uint8) on a ``size`` grid."""
    loaded = read_image(pair.image)
    labels = read_label_map(pair.mask, num_classes, mask_labels)
    if labels.shape != loaded.spatial_shape:
        raise InputError(f"{pair.mask}: mask size {labels.shape} differs from image size "
                         f"{loaded.spatial_shape} of {pair.image}")
    image01, _ = preprocess(loaded.array, _with_size(pre, size), loaded.meta["source_dtype"])
    labels = cv2.resize(labels, size[::-1], interpolation=cv2.INTER_NEAREST)
    return image01.astype(np.float16), labels


def _with_size(pre: PreprocessConfig, size: tuple[int, int]) -> PreprocessConfig:
    from dataclasses import replace

    return replace(pre, size=tuple(size))


@dataclass(frozen=True)
class AugmentConfig:
    """Paired augmentations (image and mask move together).

    The first group is geometric and photometric jitter; the second (off by default) covers
    what changes between archives: aspect ratio (images resized without keeping it), colour
    cast and saturation (other cameras and light sources), blur and lost resolution (other
    optics, upscaled frames) and JPEG compression. Each of the second group is applied to
    half of the samples, with a strength drawn up to its setting.

    Attributes:
        aspect: log-uniform change of the aspect ratio up to this factor (0.3 = x/÷ 1.35).
        hue_deg: hue rotation up to this many degrees (RGB images).
        saturation: saturation scaled by up to 1 +- this.
        blur_sigma: Gaussian blur with sigma up to this (grid pixels).
        downscale: shrink to as little as this fraction of the grid and back (0 = off).
        jpeg_quality: (lo, hi) JPEG re-encoding quality range; (0, 0) = off.
        border: what fills the grid outside the moved image: ``reflect`` (mirrored copies)
            or ``constant`` (black, as a camera's or dermatoscope's field-of-view edge).
        zoom_prob: the share of samples that are a zoomed-in view instead: scaled by
            ``zoom_scale`` (log-uniform) about a point anywhere in the frame, so the view may
            hold only part of an object or none (its mask then empty): what a tile of a frame
            looks like (``medrefine.tiling``), and frames with nothing to segment. The image
            cache is then kept at twice the grid, so a zoomed view keeps its detail.
        zoom_scale: (lo, hi) magnification of a zoomed-in view (>= 1).
    """

    hflip: bool = True
    vflip: bool = True
    rotate_deg: float = 20.0
    scale: tuple[float, float] = (0.8, 1.25)
    translate: float = 0.1
    brightness: float = 0.15
    contrast: float = 0.2
    gamma: float = 0.2
    noise_std: float = 0.02
    aspect: float = 0.0
    hue_deg: float = 0.0
    saturation: float = 0.0
    blur_sigma: float = 0.0
    downscale: float = 0.0
    jpeg_quality: tuple[int, int] = (0, 0)
    border: str = "reflect"
    zoom_prob: float = 0.0
    zoom_scale: tuple[float, float] = (1.8, 2.8)

    def __post_init__(self):
        if self.border not in ("reflect", "constant"):
            raise ConfigError(f"augment.border must be reflect or constant, got {self.border!r}")
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ConfigError(f"augment.scale must be 0 < lo <= hi, got {self.scale}")
        if not 0 <= self.downscale < 1:
            raise ConfigError(f"augment.downscale must be in [0, 1), got {self.downscale}")
        lo, hi = self.jpeg_quality
        if (lo, hi) != (0, 0) and not 1 <= lo <= hi <= 100:
            raise ConfigError("augment.jpeg_quality must be (0, 0) (off) or 1 <= lo <= hi "
                              f"<= 100, got {self.jpeg_quality}")
        if min(self.aspect, self.hue_deg, self.saturation, self.blur_sigma) < 0:
            raise ConfigError("augment.aspect, hue_deg, saturation and blur_sigma must be >= 0")
        if not 0 <= self.zoom_prob <= 1:
            raise ConfigError(f"augment.zoom_prob must be in [0, 1], got {self.zoom_prob}")
        if not 1 <= self.zoom_scale[0] <= self.zoom_scale[1]:
            raise ConfigError(f"augment.zoom_scale must be 1 <= lo <= hi, got {self.zoom_scale}")


# The image cache's size over the grid when some samples are zoomed-in views.
ZOOM_CACHE_SCALE = 2.0


class SegmentationDataset(Dataset):
    """Cached (image01, labels) pairs; ``augment`` draws a random affine + intensity change.

    Items: image01 float32 (C, H, W) and labels int64 (H, W) on the model grid.
    """

    def __init__(self, pairs: list[Pair], pre: PreprocessConfig, num_classes: int = 1,
                 augment: AugmentConfig | None = None, cache_scale: float = 1.25,
                 mask_labels: tuple[int, ...] = ()):
        self.pairs, self.pre, self.num_classes, self.augment = pairs, pre, num_classes, augment
        size = pre.size
        if augment is not None and augment.zoom_prob > 0:  # zoomed views keep their detail
            cache_scale = max(cache_scale, ZOOM_CACHE_SCALE)
        self.cache_size = ((round(size[0] * cache_scale), round(size[1] * cache_scale))
                           if augment else size)
        self.items = [load_pair(p, pre, num_classes, self.cache_size, mask_labels)
                      for p in pairs]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        image01, labels = self.items[idx]
        image01 = image01.astype(np.float32)
        if self.augment is not None:
            image01, labels = augment_pair(image01, labels, self.pre.size, self.augment)
        return torch.from_numpy(image01), torch.from_numpy(labels.astype(np.int64))


def augment_pair(image01: np.ndarray, labels: np.ndarray, size: tuple[int, int],
                 aug: AugmentConfig, rng: np.random.Generator | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Random flip/rotate/scale/aspect/translate to ``size``, the archive shifts
    (colour, blur, resolution, JPEG), then brightness/contrast/gamma/noise."""
    rng = rng or np.random.default_rng(torch.randint(0, 2**31, ()).item())
    _, h, w = image01.shape
    oh, ow = size
    angle = rng.uniform(-aug.rotate_deg, aug.rotate_deg)
    zoom = aug.zoom_prob > 0 and rng.random() < aug.zoom_prob
    lo, hi = aug.zoom_scale if zoom else aug.scale
    scale = np.exp(rng.uniform(np.log(lo), np.log(hi))) * (oh / h)
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    if aug.aspect:  # stretch one axis, squeeze the other, about the same centre
        stretch = np.exp(rng.uniform(-aug.aspect, aug.aspect) / 2)
        matrix[0, :2] *= stretch
        matrix[1, :2] /= stretch
        centre = np.array([w / 2, h / 2])
        matrix[:, 2] = centre - matrix[:, :2] @ centre
    matrix[:, 2] += (ow / 2 - w / 2, oh / 2 - h / 2)
    if zoom:  # the view's centre anywhere in the frame, the view inside it
        reach = 0.5 - 0.5 * (oh / h) / (scale + 1e-12)
        shift = rng.uniform(-reach, reach, 2) * (w, h)
        matrix[:, 2] -= matrix[:, :2] @ shift
    else:
        matrix[:, 2] += rng.uniform(-aug.translate, aug.translate, 2) * (ow, oh)
    hwc = np.ascontiguousarray(np.moveaxis(image01, 0, -1))
    border = cv2.BORDER_REFLECT_101 if aug.border == "reflect" else cv2.BORDER_CONSTANT
    img = cv2.warpAffine(hwc, matrix, (ow, oh), flags=cv2.INTER_LINEAR, borderMode=border)
    img = img[..., None] if img.ndim == 2 else img
    lab = cv2.warpAffine(labels, matrix, (ow, oh), flags=cv2.INTER_NEAREST, borderMode=border)
    img = np.moveaxis(img, -1, 0)
    if aug.hflip and rng.random() < 0.5:
        img, lab = img[:, :, ::-1], lab[:, ::-1]
    if aug.vflip and rng.random() < 0.5:
        img, lab = img[:, ::-1, :], lab[::-1, :]
    img = _archive_shift(img, aug, rng)
    if aug.contrast:
        mean = img.mean()
        img = (img - mean) * rng.uniform(1 - aug.contrast, 1 + aug.contrast) + mean
    if aug.brightness:
        img = img + rng.uniform(-aug.brightness, aug.brightness)
    img = np.clip(img, 0.0, 1.0)
    if aug.gamma:
        img = img ** np.exp(rng.uniform(-aug.gamma, aug.gamma))
    if aug.noise_std:
        img = img + rng.normal(0.0, aug.noise_std * rng.random(), img.shape)
    img = np.clip(img, 0.0, 1.0)
    return np.ascontiguousarray(img, dtype=np.float32), np.ascontiguousarray(lab)


def _archive_shift(img: np.ndarray, aug: AugmentConfig, rng: np.random.Generator
                   ) -> np.ndarray:
    """Hue/saturation, blur, lost resolution and JPEG, each on half of the samples.
    img (C, H, W) float32 in [0, 1]; returns the same layout."""
    c, h, w = img.shape
    hwc = np.ascontiguousarray(np.moveaxis(np.clip(img, 0.0, 1.0), 0, -1), dtype=np.float32)
    if c == 3 and (aug.hue_deg or aug.saturation) and rng.random() < 0.5:
        hsv = cv2.cvtColor(hwc, cv2.COLOR_RGB2HSV)  # float: H in [0, 360), S and V in [0, 1]
        hsv[..., 0] = (hsv[..., 0] + rng.uniform(-aug.hue_deg, aug.hue_deg)) % 360.0
        hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(1 - aug.saturation,
                                                        1 + aug.saturation), 0.0, 1.0)
        hwc = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if aug.blur_sigma and rng.random() < 0.5:
        hwc = cv2.GaussianBlur(hwc, (0, 0), rng.uniform(0.3, aug.blur_sigma))
    if aug.downscale and rng.random() < 0.5:
        f = rng.uniform(aug.downscale, 1.0)
        small = cv2.resize(hwc, (max(8, round(w * f)), max(8, round(h * f))),
                           interpolation=cv2.INTER_AREA)
        hwc = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    if aug.jpeg_quality != (0, 0) and rng.random() < 0.5:
        quality = int(rng.integers(aug.jpeg_quality[0], aug.jpeg_quality[1] + 1))
        u8 = np.clip(np.rint(hwc * 255), 0, 255).astype(np.uint8)
        u8 = u8 if c == 1 else cv2.cvtColor(u8, cv2.COLOR_RGB2BGR)
        ok, buf = cv2.imencode(".jpg", u8, [cv2.IMWRITE_JPEG_QUALITY, quality])
        dec = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE if c == 1 else cv2.IMREAD_COLOR)
        dec = dec if c == 1 else cv2.cvtColor(dec, cv2.COLOR_BGR2RGB)
        hwc = dec.astype(np.float32) / 255.0
    hwc = hwc.reshape(h, w, c)
    return np.moveaxis(hwc, -1, 0)
