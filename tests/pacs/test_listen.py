"""``medrefine listen``: a real Orthanc sends a study by C-STORE and gets the DICOM-SEG back;
a series cut off by an aborted association is not segmented until it is sent whole; C-ECHO;
SIGTERM stops the service cleanly."""

from __future__ import annotations

import json
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

from medrefine.pacs.config import ListenConfig
from medrefine.pacs.listen import Listener
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
