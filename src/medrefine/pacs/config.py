"""Settings of the PACS bridge: where the DICOMweb server is, what to fetch, where to send."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from medrefine.errors import ConfigError

# DICOM UIDs: digits and dots, at most 64 characters. Checked before a UID names a file or a
# URL path, so a peer cannot make medrefine write outside OUT (``../``) or query elsewhere.
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_AE_TITLE = re.compile(r"^[\x21-\x7e]([\x20-\x7e]{0,14}[\x21-\x7e])?$")

# Seconds to connect and to wait for each reply of a peer (--pacs-timeout): a hung PACS fails
# after this long instead of holding the run for minutes per series.
DEFAULT_TIMEOUT = 30.0
# What ``listen`` keeps under OUT/received at most (--max-store-gb; 1 GB = 10^9 bytes).
DEFAULT_MAX_STORE_GB = 20.0

# Modalities whose series hold no image to segment (structured reports, segmentations,
# presentation states, key objects, RT plans and structures, documents, registrations).
NON_IMAGE_MODALITIES = frozenset(
    {"SEG", "SR", "RTSTRUCT", "RTPLAN", "RTRECORD", "PR", "KO", "DOC", "REG", "RWV", "FID", "PLAN"}
)


def is_uid(text: str) -> bool:
    return bool(text) and len(text) <= 64 and _UID.match(text) is not None


def check_uid(text: str, what: str) -> str:
    if not is_uid(text):
        raise ConfigError(
            f"{what} {text!r}: not a DICOM UID (digits and dots, at most 64 characters)"
        )
    return text


@dataclass(frozen=True)
class DicomwebConfig:
    """One ``segment --dicomweb`` run.

    url: the DICOMweb root (QIDO, WADO and STOW share it), e.g. http://host:8042/dicom-web.
    study, series: UIDs; query: QIDO-RS series-level filters (keyword -> value).
    ca_bundle: a PEM file of the CA certificates to trust (default: the system's).
    timeout: seconds to connect and to wait for each reply (``--pacs-timeout``); a request
    that times out is not retried.
    """

    url: str
    study: str | None = None
    series: str | None = None
    query: dict[str, str] = field(default_factory=dict)
    push: bool = False
    overwrite: bool = False
    ca_bundle: Path | None = None
    timeout: float = DEFAULT_TIMEOUT

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"--dicomweb {self.url!r}: give the server's DICOMweb root as an http(s) URL, "
                "e.g. https://pacs.example.org/dicom-web"
            )
        if parts.username or parts.password:
            raise ConfigError(
                f"--dicomweb: the URL holds credentials; remove them and set "
                "MEDREFINE_DICOMWEB_USER/MEDREFINE_DICOMWEB_PASSWORD (or a netrc entry for "
                f"{parts.hostname}) instead"
            )
        if self.study is not None:
            check_uid(self.study, "--study")
        if self.series is not None:
            check_uid(self.series, "--series")
            if self.study is None:
                raise ConfigError("--series needs --study (the study that holds the series)")
        if self.study is None and not self.query:
            raise ConfigError(
                "--dicomweb needs --study UID or --query 'KEY=VALUE ...' to know what to fetch"
            )
        if self.ca_bundle is not None and not Path(self.ca_bundle).is_file():
            raise ConfigError(f"--ca-bundle {self.ca_bundle}: no such file; give a PEM file")
        check_timeout(self.timeout)

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""


def parse_query(text: str | None) -> dict[str, str]:
    """``"PatientID=123 Modality=CT"`` -> {"PatientID": "123", "Modality": "CT"}.

    Keys must be DICOM keywords (QIDO-RS matches on them); values may hold QIDO wildcards."""
    from pydicom.datadict import tag_for_keyword

    if not text:
        return {}
    query: dict[str, str] = {}
    for item in text.split():
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ConfigError(
                f"--query {text!r}: {item!r} is not KEY=VALUE; write e.g. "
                "--query 'PatientID=123 Modality=CT'"
            )
        if tag_for_keyword(key) is None:
            raise ConfigError(
                f"--query: {key!r} is not a DICOM keyword (e.g. PatientID, Modality, "
                "StudyDate, AccessionNumber, SeriesDescription)"
            )
        query[key] = value
    return query


@dataclass(frozen=True)
class Destination:
    """A DIMSE peer: ``HOST:PORT:AET``."""

    host: str
    port: int
    ae_title: str

    @classmethod
    def parse(cls, text: str) -> Destination:
        host, _, rest = text.rpartition(":")
        host, _, port = host.rpartition(":")
        if not host or not port.isdigit() or not rest:
            raise ConfigError(
                f"--send-to {text!r}: give HOST:PORT:AET, e.g. pacs.example.org:104:PACS"
            )
        return cls(host, int(port), rest)

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ConfigError(f"port {self.port}: give a TCP port between 1 and 65535")
        check_ae_title(self.ae_title)

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def check_timeout(seconds: float) -> float:
    if not seconds > 0 or seconds == float("inf"):
        raise ConfigError(
            f"--pacs-timeout {seconds}: give a positive number of seconds (default "
            f"{DEFAULT_TIMEOUT:g})"
        )
    return seconds


def check_ae_title(text: str) -> str:
    if not _AE_TITLE.match(text) or "\\" in text:
        raise ConfigError(
            f"AE title {text!r}: give 1-16 printable ASCII characters without backslash "
            "or leading/trailing spaces"
        )
    return text


@dataclass(frozen=True)
class ListenConfig:
    """One ``listen`` run.

    ae_title: the called AE title an association must name; others are rejected.
    bind: the interface to listen on; loopback unless told otherwise (``--bind 0.0.0.0``).
    quiet_seconds: a series counts as complete once no instance of it arrived for this long
    and every association that sent it was released normally.
    timeout: seconds of the DIMSE timeouts (ACSE, DIMSE, network), receiving and sending.
    max_store_gb: what OUT/received may hold (10^9 bytes); a C-STORE that would pass it is
    refused with 0xA700 (out of resources).
    """

    port: int = 11112
    ae_title: str = "MEDREFINE"
    bind: str = "127.0.0.1"
    quiet_seconds: float = 10.0
    send_to: Destination | None = None
    timeout: float = DEFAULT_TIMEOUT
    max_store_gb: float = DEFAULT_MAX_STORE_GB

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ConfigError(f"--port {self.port}: give a TCP port between 1 and 65535")
        check_ae_title(self.ae_title)
        if self.quiet_seconds < 0:
            raise ConfigError(f"--quiet-seconds {self.quiet_seconds}: give 0 or more seconds")
        check_timeout(self.timeout)
        if not self.max_store_gb > 0 or self.max_store_gb == float("inf"):
            raise ConfigError(
                f"--max-store-gb {self.max_store_gb}: give a positive number of GB (default "
                f"{DEFAULT_MAX_STORE_GB:g})"
            )

    @property
    def max_store_bytes(self) -> int:
        return int(self.max_store_gb * 1e9)
