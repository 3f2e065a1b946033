"""PNG/JPEG/BMP/TIFF reading: a round trip per format and variant, and damaged files."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image

from medrefine.errors import InputError
from medrefine.io import read_image

RNG = np.random.default_rng(0)
GRAY8 = RNG.integers(0, 256, (24, 32), dtype=np.uint8)
RGB8 = RNG.integers(0, 256, (24, 32, 3), dtype=np.uint8)
GRAY16 = RNG.integers(0, 65536, (24, 32), dtype=np.uint16)


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


@pytest.mark.parametrize(
    ("name", "array", "channels"),
    [
        ("gray8", GRAY8, 1),
        ("rgb8", RGB8, 3),
        ("rgba8", RNG.integers(0, 256, (24, 32, 4), dtype=np.uint8), 4),
        ("gray16", GRAY16, 1),
    ],
)
def test_png_round_trip(tmp_path: Path, name: str, array: np.ndarray, channels: int) -> None:
    image = read_image(_png(tmp_path / f"{name}.png", array))
    assert image.array.dtype == np.float32
    assert image.array.shape == (channels, 24, 32)
    expected = array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)
    np.testing.assert_array_equal(image.array, expected.astype(np.float32))
    assert image.meta["format"] == "png"
    assert image.meta["source_dtype"] == str(array.dtype)
    assert image.meta["modality"] == "OT"


def test_png_16bit_rgb_keeps_16_bits(tmp_path: Path) -> None:
    rgb16 = RNG.integers(0, 65536, (20, 30, 3), dtype=np.uint16)
    path = tmp_path / "rgb16.png"
    cv2.imwrite(str(path), rgb16[..., ::-1])  # OpenCV writes BGR
    image = read_image(path)
    assert image.meta["source_dtype"] == "uint16"
    np.testing.assert_array_equal(image.array, np.moveaxis(rgb16, -1, 0).astype(np.float32))


def test_palette_png_colour_and_gray(tmp_path: Path) -> None:
    indices = (np.arange(24 * 32).reshape(24, 32) % 3).astype(np.uint8)
    colour = Image.fromarray(indices, mode="P")
    colour.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
    colour.save(tmp_path / "colour.png")
    image = read_image(tmp_path / "colour.png")
    assert image.array.shape == (3, 24, 32)
    np.testing.assert_array_equal(image.array[:, 0, 1], [0, 255, 0])  # index 1 -> green

    gray = Image.fromarray(indices, mode="P")
    gray.putpalette([0, 0, 0, 100, 100, 100, 200, 200, 200] + [0] * 759)
    gray.save(tmp_path / "gray.png")
    image = read_image(tmp_path / "gray.png")
    assert image.array.shape == (1, 24, 32)
    np.testing.assert_array_equal(image.array[0], indices.astype(np.float32) * 100)


def test_bilevel_png_is_0_255(tmp_path: Path) -> None:
    Image.fromarray(GRAY8 > 127).save(tmp_path / "bits.png")
    image = read_image(tmp_path / "bits.png")
    assert set(np.unique(image.array)) <= {0.0, 255.0}


def test_jpeg_and_bmp(tmp_path: Path) -> None:
    yy, xx = np.mgrid[0:24, 0:32]
    smooth = np.stack([xx * 8, yy * 10, 128 + 0 * xx], -1).astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "a.jpg", quality=95)
    image = read_image(tmp_path / "a.jpg")
    assert image.array.shape == (3, 24, 32) and image.meta["format"] == "jpeg"
    assert np.abs(image.array - np.moveaxis(smooth, -1, 0)).mean() < 4  # lossy but close
    Image.fromarray(RGB8).save(tmp_path / "a.bmp")
    bmp = read_image(tmp_path / "a.bmp")
    assert bmp.meta["format"] == "bmp"
    np.testing.assert_array_equal(bmp.array, np.moveaxis(RGB8, -1, 0).astype(np.float32))


@pytest.mark.parametrize("array", [GRAY8, GRAY16, RNG.random((24, 32), dtype=np.float32) * 1000])
def test_tiff_2d_round_trip(tmp_path: Path, array: np.ndarray) -> None:
    tifffile.imwrite(tmp_path / "a.tif", array)
    image = read_image(tmp_path / "a.tif")
    assert image.array.shape == (1, 24, 32)
    assert image.meta["source_dtype"] == str(array.dtype)
    np.testing.assert_array_equal(image.array[0], array.astype(np.float32))


def test_tiff_rgb_and_multipage(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "rgb.tif", RGB8, photometric="rgb")
    assert read_image(tmp_path / "rgb.tif").array.shape == (3, 24, 32)
    stack = RNG.integers(0, 4096, (5, 24, 32), dtype=np.uint16)
    pages = [Image.fromarray(p.astype(np.int32), mode="I") for p in stack]
    pages[0].save(tmp_path / "pil.tif", save_all=True, append_images=pages[1:])
    image = read_image(tmp_path / "pil.tif")
    assert image.is_volume and image.array.shape == (1, 5, 24, 32)
    np.testing.assert_array_equal(image.array[0], stack.astype(np.float32))
    assert image.meta["frames"] == 5
    with tifffile.TiffWriter(tmp_path / "pages.tif") as tif:  # one series per page
        for page in stack:
            tif.write(page)
    image = read_image(tmp_path / "pages.tif")
    np.testing.assert_array_equal(image.array[0], stack.astype(np.float32))
    with pytest.raises(InputError, match="multi-page"):
        read_image(tmp_path / "pages.tif", tiff_pages="error")
    assert read_image(tmp_path / "pages.tif", slice=2).array.shape == (1, 24, 32)


def test_content_wins_over_suffix(tmp_path: Path) -> None:
    Image.fromarray(GRAY8).save(tmp_path / "really_png.jpg", format="PNG")
    image = read_image(tmp_path / "really_png.jpg")
    assert image.meta["format"] == "png"
    np.testing.assert_array_equal(image.array[0], GRAY8.astype(np.float32))
    Image.fromarray(GRAY8).save(tmp_path / "no_suffix", format="PNG")
    assert read_image(tmp_path / "no_suffix").meta["format"] == "png"


# ------------------------------------------------------------------------------- damaged input
def test_zero_byte_file(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.png.*empty"):
        read_image(tmp_path / "empty.png")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        read_image(tmp_path / "nope.png")


@pytest.mark.parametrize(("suffix", "fmt"), [(".png", "PNG"), (".jpg", "JPEG")])
def test_truncated_file(tmp_path: Path, suffix: str, fmt: str) -> None:
    full = tmp_path / f"full{suffix}"
    Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(full, format=fmt)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(InputError, match=r"cut\.(png|jpg).*(truncated|corrupt)"):
        read_image(cut)


@pytest.mark.parametrize("name", ["notes.png", "notes.txt", "scan.tif"])
def test_not_an_image(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_text("this is not an image\n")
    with pytest.raises(InputError, match=name.replace(".", r"\.")):
        read_image(tmp_path / name)


def _chunk(kind: bytes, body: bytes) -> bytes:
    crc = struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    return struct.pack(">I", len(body)) + kind + body + crc


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header promises width x height but holds almost no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
    data += _chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _chunk(b"IEND", b"")
    path.write_bytes(data)
    return path


def test_absurd_dimensions_are_refused_before_decoding(tmp_path: Path) -> None:
    path = _png_header_only(tmp_path / "huge.png", 200_000, 200_000)
    with pytest.raises(InputError, match=r"huge\.png.*(too large|more than)"):
        read_image(path)


def test_nan_tiff_is_refused(tmp_path: Path) -> None:
    array = np.ones((8, 8), np.float32)
    array[3, 3] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", array)
    with pytest.raises(InputError, match=r"nan\.tif.*NaN"):
        read_image(tmp_path / "nan.tif")
