"""Issue 26 item 7: a DICOM whose JPEG 2000 payload is garbage is refused in one line that says
"corrupt pixel data", with pydicom's decoder tracebacks kept off stderr, and the advice to
install a decoder only where no decoder plugin for the transfer syntax is available."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import CTImageStorage, JPEG2000Lossless, generate_uid

from medrefine.errors import InputError, UnsupportedFormatError
from medrefine.io import read_image


def write_garbage_j2k(path: Path) -> Path:
    """A 16x16 CT image in JPEG 2000 Lossless whose one fragment is not a J2K codestream."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEG2000Lossless
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.Rows, ds.Columns = "CT", 16, 16
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.PixelData = encapsulate([bytes(np.random.default_rng(0).integers(0, 256, 200, np.uint8))])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def garbage_j2k(tmp_path: Path) -> Path:
    if not get_decoder(JPEG2000Lossless).is_available:
        pytest.skip("no JPEG 2000 decoder plugin installed (pylibjpeg-openjpeg, pillow, gdcm)")
    return write_garbage_j2k(tmp_path / "garbage_j2k.dcm")


def test_reader_says_corrupt_pixel_data(garbage_j2k: Path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(InputError) as info:
        read_image(garbage_j2k)
    message = str(info.value)
    assert not isinstance(info.value, UnsupportedFormatError)
    assert message.startswith(f"{garbage_j2k}: corrupt pixel data (")
    assert "JPEG 2000" in message and "re-export" in message
    assert "install" not in message and "\n" not in message and " at 0x" not in message
    # pydicom's records (one traceback per plugin tried) stop at its logger: debug lines of ours
    assert not [r for r in caplog.records if r.name.startswith("pydicom")]
    assert any(r.name == "medrefine.io.dicom" and "pydicom" in r.message for r in caplog.records)


def test_pydicom_logging_is_left_as_it_was(garbage_j2k: Path, caplog) -> None:
    pydicom_logger = logging.getLogger("pydicom")
    handlers = list(pydicom_logger.handlers)
    with pytest.raises(InputError):
        read_image(garbage_j2k)
    assert pydicom_logger.propagate and pydicom_logger.handlers == handlers
    pydicom_logger.warning("a pydicom warning outside a decode")
    assert [r.message for r in caplog.records if r.name == "pydicom"] == [
        "a pydicom warning outside a decode"
    ]


def test_install_advice_only_without_a_decoder(garbage_j2k: Path, monkeypatch) -> None:
    monkeypatch.setattr(get_decoder(JPEG2000Lossless), "_available", {})  # no plugin usable
    with pytest.raises(UnsupportedFormatError, match=r"garbage_j2k\.dcm: .*install a decoder"):
        read_image(garbage_j2k)


@pytest.mark.parametrize("command", ["info"])
def test_cli_prints_one_line(garbage_j2k: Path, command: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "medrefine.cli", command, str(garbage_j2k)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "ERROR pydicom" not in proc.stderr
    assert str(garbage_j2k) in lines[0] and "corrupt pixel data" in lines[0]
