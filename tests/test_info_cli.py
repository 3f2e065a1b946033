"""``medrefine info``: text and JSON output, and one-line errors (exit 2) for bad inputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medrefine.cli import main


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["info", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_info_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Image.fromarray(np.arange(200, dtype=np.uint8).reshape(10, 20)).save(tmp_path / "a.png")
    code, out, err = _run(capsys, str(tmp_path / "a.png"))
    assert code == 0 and err == ""
    assert "format:" in out and "png" in out and "(1, 10, 20)" in out
    assert "min:" in out and "max:" in out and "199" in out


def test_info_dicom_json(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ct = data_dir / "dicom_samples" / "CT_small.dcm"
    ect = data_dir / "dicom_samples" / "eCT_Supplemental.dcm"
    code, out, _ = _run(capsys, "--json", str(ct), str(ect))
    assert code == 0
    reports = json.loads(out)
    assert [r["format"] for r in reports] == ["dicom", "dicom"]
    assert reports[0]["modality"] == "CT" and reports[0]["shape"] == [1, 128, 128]
    assert reports[0]["sop_instance_uids"] == ["1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"]
    assert reports[1]["frames"] == 2 and reports[1]["window_center"] == 49.0
    assert reports[1]["spacing"] == pytest.approx([10.0, 0.388672, 0.388672])


def test_info_dicom_text_and_seg(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, str(data_dir / "dicom_samples" / "693_UNCI.dcm"))
    assert code == 0 and "window_center:" in out and "series_instance_uid:" in out
    code, out, _ = _run(capsys, str(data_dir / "dicom_samples" / "liver.dcm"))
    assert code == 0 and "dicom-seg" in out and "Liver" in out


def test_info_nifti(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = data_dir / "mni152_nifti" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    code, out, _ = _run(capsys, "--json", str(path))
    report = json.loads(out)[0]
    assert code == 0 and report["shape"] == [1, 189, 233, 197] and report["spacing"] == [1, 1, 1]


def _bad_inputs(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.dcm").write_text("not dicom at all\n")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(
        tmp_path / "full.png"
    )
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    return {
        "zero-byte": tmp_path / "empty.png",
        "text-dcm": tmp_path / "notes.dcm",
        "truncated": tmp_path / "cut.png",
        "missing": tmp_path / "missing.png",
    }


@pytest.mark.parametrize("case", ["zero-byte", "text-dcm", "truncated", "missing"])
def test_bad_input_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    path = _bad_inputs(tmp_path)[case]
    code, out, err = _run(capsys, str(path))
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and path.name in lines[0] and lines[0].startswith("medrefine: error:")
    assert "Traceback" not in err


def test_several_files_report_bad_ones_at_the_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = _bad_inputs(tmp_path)
    code, out, err = _run(
        capsys, str(tmp_path / "full.png"), str(bad["zero-byte"]), str(bad["missing"])
    )
    assert code == 2 and "full.png" in out
    assert len(err.strip().splitlines()) == 1 and "2 of 3 files" in err


def test_subprocess_no_traceback(tmp_path: Path) -> None:
    path = _bad_inputs(tmp_path)["text-dcm"]
    result = subprocess.run(
        [sys.executable, "-m", "medrefine.cli", "info", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "notes.dcm" in result.stderr
