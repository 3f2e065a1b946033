"""Write the reader regression files of issue 15 into tests/io/regressions/ (each a few KB).

Each file once made a reader raise something other than ``InputError``; tests/io/
test_io_regressions.py reads every file in that folder. Files found by the fuzz harness
(tests/fuzz) are copied there by hand. Run from the repository root:

    python scripts/make_io_regressions.py
"""

from __future__ import annotations

import io
import struct
import sys
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import tifffile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from fuzz.seeds import _dicom_bytes, _seg_bytes, ct_dataset  # noqa: E402

OUT = ROOT / "tests" / "io" / "regressions"


def png_header_only(width: int, height: int, color_type: int = 3) -> bytes:
    """A PNG with an IHDR for width x height and one tiny IDAT: the size is in the header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    palette = chunk(b"PLTE", bytes(range(6))) if color_type == 3 else b""
    idat = chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + palette + idat + chunk(b"IEND", b"")


def nifti_bytes(mutate) -> bytes:
    img = nib.Nifti1Image(np.arange(24, dtype=np.int16).reshape(4, 3, 2), np.diag([1, 1, 2, 1]))
    raw = bytearray(img.to_bytes())
    mutate(raw)
    return bytes(raw)


def set_dim(raw: bytearray, index: int, value: int) -> None:
    struct.pack_into("<h", raw, 40 + 2 * index, value)  # dim[index], int16 at byte 40


def write(name: str, data: bytes) -> None:
    (OUT / name).write_bytes(data)
    print(f"{name}: {len(data)} bytes")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    # DICOM: Rows x Columns x frames in the header disagree with the pixel data.
    ds = ct_dataset(key="rows")
    ds.NumberOfFrames = -2
    write("dicom_negative_frames.dcm", _dicom_bytes(ds))
    ds = ct_dataset(key="samples")
    ds.SamplesPerPixel = 3
    write("dicom_samples_mismatch.dcm", _dicom_bytes(ds))
    ds = ct_dataset(key="rows text")
    ds.Rows = 8
    rows_us, rows_text = b"(\x00\x10\x00US\x02\x00\x08\x00", b"(\x00\x10\x00IS\x02\x00X "
    write("dicom_rows_text.dcm", _dicom_bytes(ds).replace(rows_us, rows_text))
    # DICOM-SEG without SOP / Series Instance UID.
    seg = pydicom.dcmread(io.BytesIO(_seg_bytes()))
    del seg.SeriesInstanceUID
    del seg.SOPInstanceUID
    out = io.BytesIO()
    seg.save_as(out)
    write("seg_without_uids.dcm", out.getvalue())
    # NIfTI: a negative dim, an absurd vox_offset, NaN and singular affines.
    write("nifti_negative_dim.nii", nifti_bytes(lambda r: set_dim(r, 2, -3)))
    write(
        "nifti_huge_vox_offset.nii",
        nifti_bytes(lambda r: struct.pack_into("<f", r, 108, 3.0e38)),
    )

    def nan_affine(raw: bytearray) -> None:
        struct.pack_into("<hh", raw, 252, 0, 1)  # qform_code 0, sform_code 1
        struct.pack_into("<4f", raw, 280, *[float("nan")] * 4)  # srow_x

    def zero_affine(raw: bytearray) -> None:
        struct.pack_into("<hh", raw, 252, 0, 1)
        struct.pack_into("<12f", raw, 280, *[0.0] * 12)  # srow_x, srow_y, srow_z

    write("nifti_nan_affine.nii", nifti_bytes(nan_affine))
    write("nifti_singular_affine.nii", nifti_bytes(zero_affine))
    write(
        "nifti_nan_pixdim.nii", nifti_bytes(lambda r: struct.pack_into("<f", r, 80, float("nan")))
    )
    # TIFF whose pages decode to an empty array.
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.zeros((0, 4), np.uint8))
    write("tiff_empty.tif", buf.getvalue())
    # A palette PNG mask over Pillow's bomb limit: read_mask let DecompressionBombError out.
    write("png_palette_bomb_mask.png", png_header_only(40000, 40000, color_type=3))


if __name__ == "__main__":
    main()
