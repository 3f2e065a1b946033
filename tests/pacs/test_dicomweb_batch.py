"""``segment --dicomweb``: a query over 20 series processes each once and a rerun skips them
all; each failure mode gives one line, exit code 2 and nothing stored on the server; a hung
server fails after one --pacs-timeout, a busy one after three tries, and a server that dies
mid-batch ends the run with one line (a rerun resumes)."""

from __future__ import annotations

import http.server
import json
import threading
import time

import pydicom
import pytest
from orthanc_server import SAMPLES, Orthanc, clone_series, free_port, uid_of

from medrefine.cli import main
from medrefine.pacs.dicomweb import DicomwebServer, ServerUnreachable

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


# ---------------------------------------------------------------- a hung, busy or dying server
def test_a_hung_server_fails_after_one_timeout(silent_server, credentials, tiny_weights, tmp_path,
                                               capsys):  # fmt: skip
    url = f"http://127.0.0.1:{silent_server.port}/dicom-web"
    args = ["segment", "--dicomweb", url, "--study", "1.2.3", "-o", str(tmp_path / "out")]
    t0 = time.monotonic()
    line = run_failing(args + ["--pacs-timeout", "1"] + tiny(tiny_weights), capsys)
    seconds = time.monotonic() - t0
    assert "cannot reach the DICOMweb server (no answer within 1 s" in line, line
    assert "--pacs-timeout" in line
    assert silent_server.accepted == 1  # a timeout is not retried
    assert seconds < 10, seconds


class _Busy(http.server.BaseHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        _Busy.requests.append(self.path)
        self.send_response(503)
        self.send_header("Retry-After", "3600")  # not obeyed: the run would wait an hour
        self.send_header("Content-Length", "4")
        self.end_headers()
        self.wfile.write(b"busy")

    def log_message(self, *args) -> None:
        pass


def test_a_busy_server_is_asked_three_times_then_one_line(credentials, tiny_weights, tmp_path,
                                                          capsys):  # fmt: skip
    _Busy.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Busy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
        args = ["segment", "--dicomweb", url, "--study", "1.2.3", "-o", str(tmp_path / "out")]
        t0 = time.monotonic()
        line = run_failing(args + tiny(tiny_weights), capsys)
        seconds = time.monotonic() - t0
    finally:
        server.shutdown()
        server.server_close()
    assert "the server failed to list studies (HTTP 503: busy)" in line, line
    assert len(_Busy.requests) == 3 and seconds < 10, (_Busy.requests, seconds)


@pytest.fixture()
def dying_orthanc(orthanc_bin, tmp_path):
    """An Orthanc of its own (no authentication), for a test to stop and start again."""
    server = Orthanc(tmp_path / "orthanc_dying", *orthanc_bin, auth=False)
    try:
        yield server.start()
    finally:
        server.stop()


def test_the_pacs_dies_mid_batch_one_line_and_a_rerun_resumes(
    dying_orthanc, tiny_weights, data_dir, tmp_path, monkeypatch, capsys
):
    for name in ("MEDREFINE_DICOMWEB_USER", "MEDREFINE_DICOMWEB_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    source = data_dir / SAMPLES / "CT_small.dcm"
    study, series, files = clone_series([source], tmp_path / "src", patient_id="DIES", n_series=6)
    for (path,) in files:
        dying_orthanc.upload(path)
    fetched: list[str] = []
    fetch = DicomwebServer.fetch_series

    def fetch_then_die(self, remote, folder):
        fetched.append(remote.series)
        if len(fetched) == 3:  # the PACS goes down after two series
            dying_orthanc.stop()
        return fetch(self, remote, folder)

    monkeypatch.setattr(DicomwebServer, "fetch_series", fetch_then_die)
    out = tmp_path / "out"
    args = ["segment", "--dicomweb", dying_orthanc.dicomweb, "--study", study, "-o", str(out)]
    args += ["--push", *tiny(tiny_weights)]
    line = run_failing(args, capsys)
    assert line == (
        f"medrefine: error: {dying_orthanc.dicomweb}: cannot reach the DICOMweb server "
        f"(connection refused); 4 of 6 series not fetched (failed in {out / 'report.json'}); "
        "rerun to resume"
    )
    assert len(fetched) == 3  # nothing asked of the server after it was found gone
    report = json.loads((out / "report.json").read_text())
    by_status = {r["input"]: (r["status"], r.get("not_fetched", False)) for r in report["files"]}
    assert sorted(by_status) == sorted(series)
    assert sorted(by_status.values()) == [("failed", True)] * 4 + [("ok", False)] * 2
    assert report["n_not_fetched"] == 4 and report["unreachable"] == "connection refused"
    assert not (out / ".dicomweb").exists()

    dying_orthanc.start()  # back up (same storage): the rerun does the four, skips the two
    monkeypatch.undo()
    assert main(args) == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    statuses = sorted(r["status"] for r in report["files"] if r["input"] in series)
    assert statuses == ["ok"] * 4 + ["skipped (done)"] * 2 and report["n_not_fetched"] == 0
    assert report["n_not_image"] == 2  # the two SEGs the first run pushed
    assert len(dying_orthanc.seg_instances(study)) == 6


def test_one_unreachable_request_while_the_server_answers_fails_only_that_series(
    orthanc, credentials, tiny_weights, data_dir, tmp_path, monkeypatch, capsys
):
    source = data_dir / SAMPLES / "CT_small.dcm"
    study, series, files = clone_series([source], tmp_path / "src", patient_id="BLIP", n_series=2)
    for (path,) in files:
        orthanc.upload(path)
    fetch = DicomwebServer.fetch_series

    def first_fails(self, remote, folder):
        if remote.series == series[0]:
            raise ServerUnreachable(self.url, "connection reset by peer", "check the network")
        return fetch(self, remote, folder)

    monkeypatch.setattr(DicomwebServer, "fetch_series", first_fails)
    out = tmp_path / "out"
    args = ["segment", "--dicomweb", orthanc.dicomweb, "--study", study, "-o", str(out)]
    line = run_failing(args + tiny(tiny_weights), capsys)
    assert line.startswith(f"medrefine: skipped series {series[0]}: ") and "reset" in line
    report = json.loads((out / "report.json").read_text())
    statuses = {r["input"]: r["status"] for r in report["files"]}
    assert statuses == {series[0]: "failed", series[1]: "ok"} and report["n_not_fetched"] == 0
