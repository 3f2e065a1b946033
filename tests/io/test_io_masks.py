"""Mask reading conventions: 0/255 -> 0/1, label values kept, palette indices, bad masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from medrefine.errors import InputError, UnsupportedFormatError
from medrefine.io import LoadedImage, load_mask, read_mask

LABELS = (np.arange(12 * 16).reshape(12, 16) % 4).astype(np.uint8)


def test_palette_png_keeps_indices(tmp_path: Path) -> None:
    img = Image.fromarray(LABELS, mode="P")
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 756)
    img.save(tmp_path / "voc.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "voc.png"), LABELS)


def test_binary_16bit_and_rgb_gray_masks(tmp_path: Path) -> None:
    binary = (LABELS > 1).astype(np.uint16) * 65535
    Image.fromarray(binary).save(tmp_path / "b16.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "b16.png"), LABELS > 1)
    rgb = np.repeat(((LABELS > 1) * 255).astype(np.uint8)[..., None], 3, axis=-1)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    loaded = load_mask(tmp_path / "rgb.png")
    np.testing.assert_array_equal(loaded.mask, LABELS > 1)
    assert loaded.meta["labels"] == [1]


def test_jpeg_mask_is_thresholded(tmp_path: Path) -> None:
    Image.fromarray(((LABELS > 1) * 255).astype(np.uint8)).save(tmp_path / "m.jpg", quality=95)
    mask = read_mask(tmp_path / "m.jpg")
    assert set(np.unique(mask)) <= {0, 1} and abs(int(mask.sum()) - int((LABELS > 1).sum())) < 10


def test_bad_masks(tmp_path: Path) -> None:
    colour = np.zeros((12, 16, 3), np.uint8)
    colour[..., 0] = 255
    Image.fromarray(colour).save(tmp_path / "colour.png")
    with pytest.raises(UnsupportedFormatError, match="colour mask"):
        read_mask(tmp_path / "colour.png")
    tifffile.imwrite(tmp_path / "probs.tif", np.full((12, 16), 0.3, np.float32))
    with pytest.raises(InputError, match="fractional"):
        read_mask(tmp_path / "probs.tif")
    tifffile.imwrite(tmp_path / "big.tif", np.full((12, 16), 300, np.uint16))
    with pytest.raises(InputError, match="up to 300"):
        read_mask(tmp_path / "big.tif")
    Image.fromarray(LABELS).save(tmp_path / "ok.png")
    like = LoadedImage(np.zeros((1, 10, 10), np.float32), None, {"format": "png"})
    with pytest.raises(InputError, match="differs from the image"):
        read_mask(tmp_path / "ok.png", like=like)


def test_image_dicom_is_not_a_mask(dicom_dir: Path) -> None:
    with pytest.raises(UnsupportedFormatError, match="not a DICOM-SEG"):
        read_mask(dicom_dir / "CT_small.dcm")
    with pytest.raises(UnsupportedFormatError, match="not a DICOM-SEG"):
        read_mask(dicom_dir / "rtstruct.dcm")


def test_mask_drawn_in_the_alpha_channel_alone(tmp_path: Path) -> None:
    """Some annotation tools export RGB all 0 with the mask in alpha: alpha is the mask then;
    otherwise alpha is transparency and the colour is the mask."""
    fg = LABELS > 1
    rgba = np.zeros((*LABELS.shape, 4), np.uint8)
    rgba[..., 3] = fg * 255
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "alpha.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "alpha.png"), fg)
    la = np.stack([np.zeros_like(LABELS), (fg * 255).astype(np.uint8)], -1)
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "la.png"), fg)
    opaque = np.concatenate([np.repeat((fg * 255).astype(np.uint8)[..., None], 3, -1),
                             np.full((*LABELS.shape, 1), 255, np.uint8)], -1)
    Image.fromarray(opaque, mode="RGBA").save(tmp_path / "opaque.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "opaque.png"), fg)
