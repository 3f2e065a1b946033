"""``segment --dicomweb``: a query over 20 series processes each once and a rerun skips them
all; each failure mode gives one line, exit code 2 and nothing stored on the server."""

from __future__ import annotations

import json

import pydicom
import pytest
from orthanc_server import SAMPLES, Orthanc, clone_series, free_port, uid_of

from medrefine.cli import main

REFUSE_SEG = """
function ReceivedInstanceFilter(dicom, origin, info)
  return dicom.Modality ~= 'SEG'
end
"""


def tiny(tiny_weights) -> list[str]:
    return ["--weights", str(tiny_weights["coarse"]), "--no-refine", "--device", "cpu"]


def error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_query_over_20_series_each_once_then_rerun_skips(
    orthanc, credentials, tiny_weights, data_dir, tmp_path, capsys
):
    source = data_dir / SAMPLES / "CT_small.dcm"
    study, series, files = clone_series([source], tmp_path / "src", patient_id="Q20", n_series=20)
    for (path,) in files:
        orthanc.upload(path)
    out = tmp_path / "out"
    args = ["segment", "--dicomweb", orthanc.dicomweb, "--query", "PatientID=Q20 Modality=CT"]
    args += ["-o", str(out), "--push", *tiny(tiny_weights)]
    assert main(args) == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert sorted(r["input"] for r in report["files"]) == sorted(series)
    assert {r["status"] for r in report["files"]} == {"ok"} and report["n_pushed"] == 20
    segs = orthanc.seg_instances(study)
    referenced = [pydicom.dcmread(pydicom.filebase.DicomBytesIO(orthanc.instance_file(s["ID"])))
                  .ReferencedSeriesSequence[0].SeriesInstanceUID for s in segs]  # fmt: skip
    assert sorted(referenced) == sorted(series)  # 20 SEGs, one per series

    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert [r["status"] for r in report["files"]] == ["skipped (done)"] * 20
    assert report["n_pushed"] == 0 and len(orthanc.seg_instances(study)) == 20


def run_failing(args: list[str], capsys) -> str:
    """Run ``args``; expect exit code 2 and exactly one line on stderr; return it."""
    assert main(args) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1, lines
    return lines[0]


def test_unreachable_server(credentials, tiny_weights, tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    line = run_failing(["segment", "--dicomweb", url, "--study", "1.2.3", "-o", str(tmp_path)]
                       + tiny(tiny_weights), capsys)  # fmt: skip
    assert line.startswith("medrefine: error: ") and "cannot reach the DICOMweb server" in line


def test_wrong_credentials(orthanc, credentials, tiny_weights, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MEDREFINE_DICOMWEB_PASSWORD", "wrong")
    args = ["segment", "--dicomweb", orthanc.dicomweb, "--study", "1.2.3", "-o", str(tmp_path)]
    line = run_failing(args + tiny(tiny_weights), capsys)
    assert "refused the credentials (HTTP 401)" in line and "wrong" not in line


def test_credentials_from_netrc_not_the_command_line(
    orthanc, credentials, tiny_weights, data_dir, tmp_path, monkeypatch, capsys
):
    from orthanc_server import PASSWORD, USER

    monkeypatch.delenv("MEDREFINE_DICOMWEB_USER")
    monkeypatch.delenv("MEDREFINE_DICOMWEB_PASSWORD")
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login {USER} password {PASSWORD}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    study = uid_of(data_dir / SAMPLES / "CT_small.dcm", "StudyInstanceUID")
    args = ["segment", "--dicomweb", orthanc.dicomweb, "--study", study, "-o", str(tmp_path)]
    assert main(args + ["--list"] + tiny(tiny_weights)) == 0
    assert capsys.readouterr().out.startswith(f"segment\t{study}\t")
    with_user = orthanc.dicomweb.replace("http://", f"http://{USER}:{PASSWORD}@")
    args[2] = with_user
    line = run_failing(args + tiny(tiny_weights), capsys)
    assert "the URL holds credentials" in line and PASSWORD not in line


def test_unknown_study(orthanc, credentials, tiny_weights, tmp_path, capsys):
    args = ["segment", "--dicomweb", orthanc.dicomweb, "--study", "1.2.3.4.5", "-o", str(tmp_path)]
    line = run_failing(args + tiny(tiny_weights), capsys)
    assert "study 1.2.3.4.5 is not on the server" in line


@pytest.mark.parametrize("name", ["liver.dcm", "rtstruct.dcm"])
def test_series_that_is_not_an_image(orthanc, credentials, tiny_weights, data_dir, tmp_path,
                                     name, capsys):  # fmt: skip
    ds = pydicom.dcmread(data_dir / SAMPLES / name, stop_before_pixels=True, force=True)
    args = ["segment", "--dicomweb", orthanc.dicomweb, "--study", ds.StudyInstanceUID]
    args += ["--series", ds.SeriesInstanceUID, "-o", str(tmp_path / "out"), "--push"]
    line = run_failing(args + tiny(tiny_weights), capsys)
    assert f"is a {ds.Modality} series, not an image" in line
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def refusing_orthanc(orthanc_bin, data_dir, tmp_path_factory):
    """An Orthanc (no authentication) whose storage rule refuses SEG instances."""
    server = Orthanc(tmp_path_factory.mktemp("orthanc_refuse"), *orthanc_bin, auth=False,
                     lua=REFUSE_SEG)  # fmt: skip
    try:
        server.start()
        server.upload(data_dir / SAMPLES / "CT_small.dcm")
        yield server
    finally:
        server.stop()


def test_push_the_server_refuses(refusing_orthanc, tiny_weights, data_dir, tmp_path, monkeypatch,
                                 capsys):  # fmt: skip
    for name in ("MEDREFINE_DICOMWEB_USER", "MEDREFINE_DICOMWEB_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    study = uid_of(data_dir / SAMPLES / "CT_small.dcm", "StudyInstanceUID")
    out = tmp_path / "out"
    args = ["segment", "--dicomweb", refusing_orthanc.dicomweb, "--study", study, "-o", str(out)]
    line = run_failing(args + ["--push"] + tiny(tiny_weights), capsys)
    assert line.startswith("medrefine: skipped series ") and "refused to keep it" in line
    assert refusing_orthanc.seg_instances(study) == []  # nothing stored
    report = json.loads((out / "report.json").read_text())
    assert [r["status"] for r in report["files"]] == ["failed"]
