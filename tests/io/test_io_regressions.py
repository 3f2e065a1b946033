"""Files that once made a reader raise something other than ``InputError`` (issue 15), and the
decompression bombs: refused from the header, before decoding, with memory to spare.

tests/io/regressions/ holds the files (scripts/make_io_regressions.py writes most of them;
the fuzz harness in tests/fuzz found the others). Every one must be read or refused with one
``InputError`` line naming the file, by ``read_image`` and by ``read_mask``.
"""

from __future__ import annotations

import gzip
import json
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medrefine.errors import InputError
from medrefine.io import ReadLimits, read_image, read_limits, read_mask
from medrefine.io.limits import DEFAULT_CAP_MB, check_decoded_size, decoded_mb

REGRESSIONS = Path(__file__).parent / "regressions"
FILES = sorted(p for p in REGRESSIONS.iterdir() if p.is_file())


@pytest.mark.parametrize("reader", [read_image, read_mask], ids=["read_image", "read_mask"])
@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_regression_files_give_input_error_or_a_result(path, reader):
    try:
        reader(path)
    except InputError as err:
        message = str(err)
        assert "\n" not in message and str(path) in message
        assert "unexpected" not in message, message  # the reader itself must say what is wrong


def test_the_regression_folder_holds_every_bug_of_the_issue():
    names = {p.name for p in FILES}
    expected = {
        "dicom_rows_text.dcm",  # ValueError from int(Rows)
        "dicom_unknown_vr_modality.dcm",  # NotImplementedError, lazily decoded unknown VR
        "seg_without_uids.dcm",  # AttributeError in dicom_seg.py
        "nifti_negative_dim.nii",
        "nifti_huge_vox_offset.nii",  # OverflowError
        "nifti_nan_affine.nii",  # LinAlgError
        "nifti_singular_affine.nii",  # ValueError from ornt_transform
        "tiff_empty.tif",
        "png_palette_bomb_mask.png",  # read_mask let DecompressionBombError out
    }
    assert expected <= names


def test_a_damaged_affine_keeps_the_voxel_order():
    image = read_image(REGRESSIONS / "nifti_nan_affine.nii")
    assert image.array.shape == (1, 2, 3, 4)  # (C, k, j, i): the voxel grid, transposed
    assert np.array_equal(image.meta["affine"], np.eye(4))


def test_a_library_error_spanning_lines_becomes_one_line():
    assert str(InputError("a.nii: bad (Expected 60 bytes\n - damaged?); fix")) == (
        "a.nii: bad (Expected 60 bytes - damaged?); fix"
    )


# ---------------------------------------------------------------- memory limits
def png_bomb(path: Path, side: int = 16000) -> Path:
    """A gray PNG of side x side zeros, written row block by row block (16000: 249 KB)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    packer = zlib.compressobj(9)
    rows = bytes((side + 1) * 500)  # filter byte + pixels, 500 rows at a time
    data = b"".join(packer.compress(rows) for _ in range(side // 500)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )
    return path


def nifti_bomb(path: Path, side: int = 1000) -> Path:
    """A .nii.gz of side^3 uint8 zeros (1000: about 1 MB on disk, 1 GB of voxels)."""
    header = nib.Nifti1Header()
    header.set_data_shape((side, side, side))
    header.set_data_dtype(np.uint8)
    header["vox_offset"] = 352
    block = bytes(16_000_000)
    with gzip.open(path, "wb", compresslevel=6) as fh:
        fh.write(header.binaryblock + b"\0" * 4)
        for _ in range(side**3 // len(block)):
            fh.write(block)
        fh.write(bytes(side**3 % len(block)))
    return path


def test_png_bomb_is_refused_from_its_header(tmp_path):
    bomb = png_bomb(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 300_000
    for reader in (read_image, read_mask):
        with pytest.raises(InputError, match=r"16000 x 16000 x 1 .*--max-decoded-mb"):
            reader(bomb)


def test_the_limit_is_configurable_and_named():
    with read_limits(ReadLimits(max_decoded_mb=10)):
        with pytest.raises(InputError, match=r"about 14 MB decoded, more than the 10 MB limit"):
            check_decoded_size("x.png", (1000, 1000, 3), 1)
    with read_limits(ReadLimits(max_decoded_mb=20)):
        check_decoded_size("x.png", (1000, 1000, 3), 1)
    assert ReadLimits().limit_mb() <= DEFAULT_CAP_MB
    assert decoded_mb((2, 3), 4) == 24 * 2 / 2**20
    with pytest.raises(InputError, match="negative size"):
        check_decoded_size("x.nii", (4, -1, 2), 2)


def test_a_raised_limit_reads_what_the_default_refuses(tmp_path):
    path = tmp_path / "wide.png"
    Image.fromarray(np.zeros((600, 800), np.uint8)).save(path)
    with read_limits(ReadLimits(max_decoded_mb=1)), pytest.raises(InputError, match="1 MB limit"):
        read_image(path)
    with read_limits(ReadLimits(max_decoded_mb=8)):
        assert read_image(path).array.shape == (1, 600, 800)


def test_bombs_exit_2_in_a_batch_with_little_memory(tiny_weights, tmp_path):
    """The issue's bombs through `medrefine segment`: exit 2 in seconds, peak under 2 GB,
    and the good file beside them is segmented."""
    good = tmp_path / "good.png"
    Image.fromarray(np.full((40, 48, 3), 90, np.uint8)).save(good)
    inputs = [png_bomb(tmp_path / "bomb.png"), nifti_bomb(tmp_path / "bomb.nii.gz"), good]
    out = tmp_path / "out"
    code = (
        "import sys\nfrom medrefine.bench import peak_rss_mb\nfrom medrefine.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "print('peak_mb', peak_rss_mb(), file=sys.stderr)\n"
        "sys.exit(code)"
    )
    args = ["-q", "segment", *map(str, inputs), "-o", str(out), "--no-refine"]
    args += ["--weights", str(tiny_weights["coarse"])]
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120
    )
    seconds = time.perf_counter() - t0
    # VmHWM, not ru_maxrss: the child's ru_maxrss includes this pytest process's own peak.
    peak_mb = float(done.stderr.split("peak_mb")[-1].split()[0])
    assert done.returncode == 2, done.stderr
    assert seconds < 60 and peak_mb < 2048, (seconds, peak_mb)
    report = json.loads((out / "report.json").read_text())
    status = {Path(r["input"]).name: r["status"] for r in report["files"]}
    assert status == {"bomb.png": "failed", "bomb.nii.gz": "failed", "good.png": "ok"}
    errors = [r["error"] for r in report["files"] if r["status"] == "failed"]
    assert all("--max-decoded-mb" in e for e in errors), errors
