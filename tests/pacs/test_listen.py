"""``medrefine listen``: a real Orthanc sends a study by C-STORE and gets the DICOM-SEG back;
a series cut off by an aborted association is not segmented until it is sent whole; C-ECHO;
SIGTERM stops the service cleanly. What it lets in: loopback by default, only its own called AE
title, at most --max-store-gb (0xA700 past it); a hung peer fails a send after the timeout."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from orthanc_server import CT_SERIES, SAMPLES, clone_series, free_port
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

from medrefine.errors import ConfigError, InputError
from medrefine.pacs.config import Destination, ListenConfig
from medrefine.pacs.listen import Listener
from medrefine.pacs.receiver import ASSOCIATION_LOG, StorageSCP
from medrefine.pacs.sender import send_file
from medrefine.pipeline import SegmentationPipeline

ROOT = Path(__file__).resolve().parents[2]


def echo_ok(port: int) -> bool:
    try:  # not listening yet: no association attempt (and no pynetdicom error log)
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="MEDREFINE")
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status) and status.Status == 0


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_orthanc_sends_a_study_and_the_seg_comes_back(orthanc, tiny_weights, data_dir, tmp_path):
    sources = sorted((data_dir / CT_SERIES).glob("*.dcm"))
    study, (series,), (files,) = clone_series(sources, tmp_path / "src", patient_id="LISTEN")
    for path in files:
        orthanc.upload(path)
    port, out = free_port(), tmp_path / "out"
    command = [sys.executable, "-m", "medrefine.cli", "listen", "-o", str(out)]
    command += ["--port", str(port), "--bind", "127.0.0.1", "--quiet-seconds", "1"]
    command += ["--send-to", f"127.0.0.1:{orthanc.dicom_port}:{orthanc.aet}"]
    command += ["--weights", str(tiny_weights["coarse"]), "--no-refine", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log = (tmp_path / "listen.log").open("w")
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: proc.poll() is not None or echo_ok(port), 120, "C-ECHO")
        assert proc.poll() is None, (tmp_path / "listen.log").read_text()
        modality = {"AET": "MEDREFINE", "Host": "127.0.0.1", "Port": port}
        orthanc.rest.put(f"{orthanc.base}/modalities/medrefine", json=modality).raise_for_status()
        (study_id,) = [s["ID"] for s in orthanc.find("Study", {"StudyInstanceUID": study})]
        t0 = time.monotonic()
        sent = orthanc.rest.post(f"{orthanc.base}/modalities/medrefine/store", data=study_id)
        sent.raise_for_status()
        (seg,) = wait_for(lambda: orthanc.seg_instances(study), 120, "the SEG in Orthanc")
        round_trip_s = time.monotonic() - t0
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    text = (tmp_path / "listen.log").read_text()
    assert code == 0, text
    assert re.search(rf"association \d+ from ORTHANC@127.0.0.1:\d+ released: {len(files)} ", text)
    ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(orthanc.instance_file(seg["ID"])))
    assert [str(r.SeriesInstanceUID) for r in ds.ReferencedSeriesSequence] == [series]
    referenced = {u[2] for u in hd.seg.Segmentation.from_dataset(ds).get_source_image_uids()}
    assert referenced == {str(pydicom.dcmread(f).SOPInstanceUID) for f in files}
    report = json.loads((out / "report.json").read_text())
    (record,) = report["files"]
    assert record["status"] == "ok" and record["n_instances"] == len(files)
    assert record["sent_to"] == f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}"
    assert len(list((out / "received" / study / series).glob("*.dcm"))) == len(files)
    written = {p.relative_to(out).parts[0] for p in out.rglob("*")}
    assert written == {"received", f"{series}.dcm", f"{series}.json", "report.json",
                       "report.csv", "associations.jsonl"}  # fmt: skip
    print(f"C-STORE in -> SEG back in Orthanc: {round_trip_s:.1f} s")


@pytest.fixture()
def listener(tiny_weights, tmp_path):
    """A Listener in a thread (tiny coarse model, quiet period 0.5 s) on a free port."""
    pipe = SegmentationPipeline(
        cpunet_weights=tiny_weights["coarse"], use_diffusion=False, device="cpu"
    )
    config = ListenConfig(port=free_port(), bind="127.0.0.1", quiet_seconds=0.5)
    service = Listener(config, tmp_path / "out", pipe, ["dicom-seg", "json"], {"provenance": {}})
    service.start()
    stop = threading.Event()
    thread = threading.Thread(target=service.serve, args=(stop,), daemon=True)
    thread.start()
    try:
        yield service
    finally:
        stop.set()
        thread.join(timeout=30)
        service.close()


def test_half_received_series_is_not_segmented(listener, data_dir, tmp_path):
    source = data_dir / SAMPLES / "CT_small.dcm"
    _, (series,), (files,) = clone_series([source] * 4, tmp_path / "src", patient_id="HALF")
    for i, path in enumerate(files):  # four slices 1 mm apart
        ds = pydicom.dcmread(path)
        ds.ImagePositionPatient = [0.0, 0.0, float(i)]
        ds.save_as(path)
    out, port = listener.out_dir, listener.config.port
    assert echo_ok(port)

    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(CTImageStorage, pydicom.dcmread(files[0]).file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="MEDREFINE")
    for path in files[:2]:
        assert assoc.send_c_store(pydicom.dcmread(path)).Status == 0
    assoc.abort()  # cut off mid-series
    time.sleep(1.5)  # three quiet periods
    assert not (out / f"{series}.dcm").exists()
    assert [s.series for s in listener.scp.tracker.waiting()] == [series]

    bad = pydicom.dcmread(files[2])
    bad.SeriesInstanceUID = "../../escape"  # must not name a folder
    assoc = ae.associate("127.0.0.1", port, ae_title="MEDREFINE")
    assert assoc.send_c_store(bad).Status == 0xC000
    for path in files:  # the whole series again, then a normal release
        assert assoc.send_c_store(pydicom.dcmread(path)).Status == 0
    assoc.release()
    seg_path = wait_for(lambda: (out / f"{series}.dcm").is_file() and out / f"{series}.dcm", 30,
                        "the SEG")  # fmt: skip
    seg = hd.seg.segread(seg_path)
    assert {u[2] for u in seg.get_source_image_uids()} == {
        str(pydicom.dcmread(f).SOPInstanceUID) for f in files
    }
    assert not list(tmp_path.rglob("escape*"))
    log = [json.loads(line) for line in (out / "associations.jsonl").read_text().splitlines()]
    assert [(e["released"], e["stored"], e["refused"]) for e in log if e["peer"].startswith(
        "SCANNER")] == [(False, 2, 0), (True, 4, 1)]  # fmt: skip
    assert len(listener.records) == 1 and listener.records[0]["status"] == "ok"


# ---------------------------------------------------------------- what the receiver lets in
@pytest.fixture()
def start_scp(tmp_path):
    """Start a StorageSCP alone (no segmenting) into tmp_path/out: the defaults but a free
    port, and the ListenConfig fields given; stopped after the test."""
    started = []

    def start(**fields) -> StorageSCP:
        out = tmp_path / "out"
        out.mkdir(exist_ok=True)
        server = StorageSCP(ListenConfig(port=free_port(), **fields), out)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def associations(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / ASSOCIATION_LOG).read_text().splitlines()]


def test_listen_defaults_bind_loopback_with_a_quota_and_a_timeout():
    from medrefine.cli import build_parser

    args = build_parser().parse_args(["listen", "-o", "out"])
    assert (args.bind, args.max_store_gb, args.pacs_timeout) == ("127.0.0.1", 20.0, 30.0)
    config = ListenConfig()
    assert (config.bind, config.max_store_gb, config.timeout) == ("127.0.0.1", 20.0, 30.0)
    for bad in ({"max_store_gb": 0}, {"timeout": -1}, {"timeout": float("nan")}):
        with pytest.raises(ConfigError):
            ListenConfig(**bad)


def test_an_association_calling_another_ae_title_is_rejected(start_scp, caplog):
    caplog.set_level(logging.INFO, logger="medrefine.pacs")
    scp = start_scp()
    assert scp._server.server_address[0] == "127.0.0.1"  # loopback unless --bind says otherwise
    port = scp.config.port
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="SOMEONE_ELSE")
    assert assoc.is_rejected and not assoc.is_established
    assoc = ae.associate("127.0.0.1", port, ae_title="MEDREFINE")
    assert assoc.is_established and assoc.send_c_echo().Status == 0
    assoc.release()
    (rejected,) = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert re.fullmatch(
        r"association from SCANNER@127\.0\.0\.1:\d+ rejected: it called AE title "
        r"'SOMEONE_ELSE', this receiver is 'MEDREFINE'",
        rejected,
    ), rejected
    log = wait_for(lambda: len(associations(scp.out_dir)) == 2 and associations(scp.out_dir), 10,
                   "the association log")  # fmt: skip
    assert [e.get("rejected") for e in log] == [
        "it called AE title 'SOMEONE_ELSE', this receiver is 'MEDREFINE'",
        None,
    ]


def test_a_c_store_past_the_quota_is_refused_out_of_resources(start_scp, data_dir, tmp_path,
                                                               caplog):  # fmt: skip
    caplog.set_level(logging.INFO, logger="medrefine.pacs")
    source = data_dir / SAMPLES / "CT_small.dcm"
    scp = start_scp(max_store_gb=1.5 * source.stat().st_size / 1e9)  # room for one instance
    study, (series,), (files,) = clone_series([source] * 3, tmp_path / "src", patient_id="FULL")
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(CTImageStorage, pydicom.dcmread(files[0]).file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", scp.config.port, ae_title="MEDREFINE")
    statuses = [assoc.send_c_store(pydicom.dcmread(path)).Status for path in files]
    resent = assoc.send_c_store(pydicom.dcmread(files[0])).Status  # replaces its own file
    assoc.release()
    assert statuses == [0x0000, 0xA700, 0xA700] and resent == 0x0000
    stored = list((scp.out_dir / "received" / study / series).glob("*.dcm"))
    assert [p.name for p in stored] == [f"{pydicom.dcmread(files[0]).SOPInstanceUID}.dcm"]
    refusals = [r for r in caplog.records if "0xA700" in r.getMessage()]
    assert len(refusals) == 1 and "--max-store-gb" in refusals[0].getMessage()
    (entry,) = wait_for(lambda: associations(scp.out_dir), 10, "the association log")
    assert (entry["stored"], entry["refused"]) == (2, 2)


def test_a_hung_peer_fails_the_send_after_the_timeout(silent_server, data_dir):
    destination = Destination("127.0.0.1", silent_server.port, "PACS")
    t0 = time.monotonic()
    with pytest.raises(InputError, match="no answer within 1 s"):
        send_file(data_dir / SAMPLES / "CT_small.dcm", destination, "MEDREFINE", timeout=1)
    assert time.monotonic() - t0 < 10 and silent_server.accepted == 1
