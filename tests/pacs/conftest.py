"""Fixtures of the PACS tests: a real Orthanc loaded with the shared DICOM samples.

The tests skip (with the reason) only where Orthanc or its DICOMweb plugin cannot be found;
``.ci/run`` installs them (Debian packages orthanc, orthanc-dicomweb).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
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
