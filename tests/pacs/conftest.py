"""Fixtures of the PACS tests: a real Orthanc loaded with the shared DICOM samples.

The tests skip (with the reason) only where Orthanc or its DICOMweb plugin cannot be found;
``.ci/run`` installs them (Debian packages orthanc, orthanc-dicomweb).
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from orthanc_server import CT_SERIES, PASSWORD, SAMPLES, USER, Orthanc, find_orthanc  # noqa: E402


@pytest.fixture(scope="session")
def orthanc_bin() -> tuple[str, Path]:
    found = find_orthanc()
    if isinstance(found, str):
        pytest.skip(found)
    return found


@pytest.fixture(scope="session")
def orthanc(orthanc_bin, data_dir, tmp_path_factory) -> Iterator[Orthanc]:
    """Orthanc with authentication on, loaded with dicom_samples and the CT series."""
    server = Orthanc(tmp_path_factory.mktemp("orthanc"), *orthanc_bin)
    try:
        server.start()
        files = sorted((data_dir / SAMPLES).glob("*.dcm"))
        files += sorted((data_dir / CT_SERIES).glob("*.dcm"))
        for path in files:
            server.upload(path)
        yield server
    finally:
        server.stop()


@pytest.fixture()
def credentials(monkeypatch) -> None:
    """The test Orthanc's user in the environment (how medrefine takes credentials)."""
    monkeypatch.setenv("MEDREFINE_DICOMWEB_USER", USER)
    monkeypatch.setenv("MEDREFINE_DICOMWEB_PASSWORD", PASSWORD)
    monkeypatch.delenv("MEDREFINE_DICOMWEB_TOKEN", raising=False)
    monkeypatch.setenv("NETRC", os.devnull)


@dataclass
class SilentServer:
    """A TCP server on loopback that accepts every connection and never answers (a hung PACS)."""

    port: int = 0
    accepted: int = 0
    _connections: list[socket.socket] = field(default_factory=list)


@pytest.fixture()
def silent_server() -> Iterator[SilentServer]:
    listening = socket.create_server(("127.0.0.1", 0))
    listening.settimeout(0.1)
    server = SilentServer(port=listening.getsockname()[1])
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listening.accept()
            except TimeoutError:
                continue
            server._connections.append(conn)  # held open, never read from or written to
            server.accepted += 1

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in server._connections:
            conn.close()
        listening.close()
