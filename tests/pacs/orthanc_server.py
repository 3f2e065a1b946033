"""A real Orthanc for the PACS tests: started on loopback on free ports with a temporary config
and storage folder, talked to through its REST API, always stopped."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest
import requests

PLUGIN_DIRS = (Path("/usr/share/orthanc/plugins"), Path("/usr/lib/orthanc/plugins"))
USER, PASSWORD = "medrefine", "orthanc-test-secret"
CT_SERIES = Path("ct_hu_samples") / "dicom_series"
SAMPLES = Path("dicom_samples")


def find_orthanc() -> tuple[str, Path] | str:
    """(the Orthanc binary, the DICOMweb plugin) or why they cannot be found."""
    binary = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin:/usr/bin")
    if binary is None:
        return "Orthanc is not installed (Debian: apt-get install orthanc orthanc-dicomweb)"
    for folder in PLUGIN_DIRS:
        plugin = folder / "libOrthancDicomWeb.so"
        if plugin.is_file():
            return binary, plugin
    return "the Orthanc DICOMweb plugin is not installed (Debian: apt-get install orthanc-dicomweb)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Orthanc:
    """One running Orthanc; ``rest`` is an authenticated session on its REST API."""

    folder: Path
    binary: str
    plugin: Path
    auth: bool = True
    lua: str | None = None
    http_port: int = field(default_factory=free_port)
    dicom_port: int = field(default_factory=free_port)
    aet: str = "ORTHANC"
    process: subprocess.Popen | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.base}/dicom-web"

    def start(self) -> Orthanc:
        self.folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "medrefine-test",
            "StorageDirectory": str(self.folder / "db"),
            "IndexDirectory": str(self.folder / "db"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "RemoteAccessAllowed": False,  # loopback only
            "AuthenticationEnabled": self.auth,
            "RegisteredUsers": {USER: PASSWORD} if self.auth else {},
            "Plugins": [str(self.plugin)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "StableAge": 1,
            "LuaScripts": [],
        }
        if self.lua:
            script = self.folder / "filter.lua"
            script.write_text(self.lua)
            config["LuaScripts"] = [str(script)]
        (self.folder / "orthanc.json").write_text(json.dumps(config, indent=1))
        log = (self.folder / "orthanc.log").open("w")
        self.process = subprocess.Popen(
            [self.binary, str(self.folder / "orthanc.json")],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.folder,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {self.log_tail()}")
            try:
                if self.rest.get(f"{self.base}/system", timeout=1).ok:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"Orthanc did not answer within 30 s: {self.log_tail()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def log_tail(self) -> str:
        path = self.folder / "orthanc.log"
        return path.read_text()[-2000:] if path.is_file() else ""

    @property
    def rest(self) -> requests.Session:
        session = requests.Session()
        if self.auth:
            session.auth = (USER, PASSWORD)
        return session

    # ---------------------------------------------------------------- REST helpers
    def upload(self, path: Path) -> dict:
        reply = self.rest.post(f"{self.base}/instances", data=path.read_bytes(), timeout=30)
        reply.raise_for_status()
        return reply.json()

    def find(self, level: str, query: dict) -> list[dict]:
        reply = self.rest.post(
            f"{self.base}/tools/find",
            json={"Level": level, "Query": query, "Expand": True},
            timeout=30,
        )
        reply.raise_for_status()
        return reply.json()

    def seg_instances(self, study_uid: str) -> list[dict]:
        """The SEG instances of a study, each with its tags."""
        found = []
        for series in self.find("Series", {"StudyInstanceUID": study_uid, "Modality": "SEG"}):
            for instance_id in series["Instances"]:
                tags = self.rest.get(f"{self.base}/instances/{instance_id}/simplified-tags")
                found.append({"ID": instance_id, "tags": tags.json()})
        return found

    def instance_file(self, instance_id: str) -> bytes:
        reply = self.rest.get(f"{self.base}/instances/{instance_id}/file", timeout=30)
        reply.raise_for_status()
        return reply.content


# ---------------------------------------------------------------- DICOM helpers
def uid_of(path: Path, keyword: str) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).get(keyword))


def dciodvfy_errors(path: Path) -> list[str]:
    """dciodvfy's error lines for a DICOM file (skips where dicom3tools is missing)."""
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed")
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def clone_series(
    sources: list[Path], folder: Path, *, patient_id: str, n_series: int = 1
) -> tuple[str, list[str], list[list[Path]]]:
    """Copies of the ``sources`` (one series) as ``n_series`` new series of one new study:
    fresh Study/Series/SOP Instance UIDs, ``patient_id``. Returns (study UID, series UIDs,
    files per series)."""
    from pydicom.uid import generate_uid

    study = generate_uid()
    series_uids, files = [], []
    for k in range(n_series):
        series = generate_uid()
        written = []
        for i, source in enumerate(sources):
            ds = pydicom.dcmread(source)
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.PatientID, ds.SeriesNumber = patient_id, k + 1
            path = folder / f"s{k:02d}_{i:03d}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
            written.append(path)
        series_uids.append(series)
        files.append(written)
    return study, series_uids, files
