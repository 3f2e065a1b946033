"""A DICOMweb server as medrefine uses it: find series (QIDO-RS), fetch them (WADO-RS), store a
DICOM-SEG (STOW-RS) and find the SEGs medrefine stored before.

Every failure of the network or the server becomes an ``InputError`` of one line that says what
was asked, what the server answered and what to check (``_call``), so the CLI prints it and
exits with code 2. A server that cannot be reached (refused, timed out, connection lost) raises
``ServerUnreachable``, so a batch can stop instead of failing each remaining series alike.

Each request waits at most ``config.timeout`` to connect and for each reply, once: a timeout or
a refused connection is never retried (a hung server costs one timeout, not several). Only the
"busy" answers 429 and 503 are retried, twice, briefly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pydicom
import requests
from pydicom.dataset import Dataset
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from medrefine.errors import InputError
from medrefine.io import atomic_output
from medrefine.pacs.config import DicomwebConfig, is_uid
from medrefine.pacs.credentials import PASSWORD_ENV, TOKEN_ENV, USER_ENV, build_session

logger = logging.getLogger(__name__)

T = TypeVar("T")
# Our SEGs carry this Manufacturer (io/dicom_seg.py); only they count when resuming, so a SEG
# drawn by a radiologist or another tool never stops medrefine from segmenting a series.
SEG_MANUFACTURER = "medrefine"

# Tags of the QIDO-RS / JSON metadata replies (DICOM JSON model, PS3.18 F.2).
_MODALITY = "00080060"
_MANUFACTURER = "00080070"
_SERIES_DESCRIPTION = "0008103E"
_STUDY_UID = "0020000D"
_SERIES_UID = "0020000E"
_SOP_UID = "00080018"
_N_INSTANCES = "00201209"
_REFERENCED_SERIES = "00081115"
_FAILED_SOP = "00081198"


class ServerUnreachable(InputError):
    """The server refused the connection, did not answer within the timeout, or dropped it.

    ``why`` is the short reason ("connection refused", "no answer within 30 s ...")."""

    def __init__(self, url: str, why: str, hint: str) -> None:
        super().__init__(f"{url}: cannot reach the DICOMweb server ({why}); {hint}")
        self.url, self.why = url, why


@dataclass(frozen=True)
class RemoteSeries:
    """A series as QIDO-RS lists it."""

    study: str
    series: str
    modality: str
    description: str = ""
    n_instances: int | None = None


class DicomwebServer:
    """QIDO-RS, WADO-RS and STOW-RS on one DICOMweb root, with medrefine's error messages."""

    def __init__(self, config: DicomwebConfig) -> None:
        from dicomweb_client.api import DICOMwebClient

        self.config = config
        self.url = config.url.rstrip("/")
        self.session = build_session(config)
        # Busy servers answer 429/503 for a moment: retry those twice, briefly (0.25 s, 0.5 s;
        # a Retry-After header is not obeyed, a server cannot park the run for an hour). Never
        # retry a refused connection or a timeout: dicomweb-client's own retry (``retrying``)
        # retries every exception, so a hung server cost three timeouts per request.
        busy = Retry(
            total=2,
            connect=0,
            read=False,
            other=0,
            status=2,
            status_forcelist=(429, 503),
            allowed_methods=None,  # STOW-RS's POST too: a 503 stored nothing
            backoff_factor=0.25,
            respect_retry_after_header=False,
            raise_on_status=False,  # the last reply goes to raise_for_status: "HTTP 503: ..."
        )
        for prefix in ("http://", "https://"):
            self.session.mount(prefix, HTTPAdapter(max_retries=busy))
        self.client = DICOMwebClient(self.url, session=self.session, timeout=config.timeout)
        self.client.set_http_retry_params(retry=False)

    # ------------------------------------------------------------ look-ups
    def check(self) -> None:
        """Reach the server and check the credentials before any work starts."""
        self._call("list studies", lambda: self.client.search_for_studies(limit=1))

    def reachable(self) -> bool:
        """Whether the server answers at all now (after a request failed to reach it)."""
        try:
            self.check()
        except ServerUnreachable:
            return False
        except InputError:  # it answered, if only to refuse
            return True
        return True

    def study_series(self, study: str) -> list[RemoteSeries]:
        """Every series of ``study``; an unknown study raises ``InputError``."""
        found = self._call(
            f"list the series of study {study}",
            lambda: self.client.search_for_series(study, get_remaining=True),
            not_found=f"study {study} is not on the server; check the Study Instance UID",
        )
        if not found:
            raise InputError(
                f"{self.url}: study {study} is not on the server (no series found); "
                "check the Study Instance UID"
            )
        return [_series_of(item, study) for item in found]

    def query_series(self, query: dict[str, str], study: str | None = None) -> list[RemoteSeries]:
        """The series that match the QIDO-RS filters ``query`` (within ``study`` if given)."""
        found = self._call(
            f"search series {query}",
            lambda: self.client.search_for_series(
                study, search_filters=dict(query), get_remaining=True
            ),
        )
        return [_series_of(item, study) for item in found]

    def segmented_series(self, study: str) -> set[str]:
        """Series UIDs of ``study`` that a medrefine DICOM-SEG on the server references."""
        segs = self._call(
            f"list the SEG series of study {study}",
            lambda: self.client.search_for_series(
                study, search_filters={"Modality": "SEG"}, get_remaining=True
            ),
        )
        done: set[str] = set()
        for item in segs:
            seg_series = _value(item, _SERIES_UID)
            if not seg_series:
                continue
            metadata = self._call(
                f"read the metadata of SEG series {seg_series}",
                lambda s=seg_series: self.client.retrieve_series_metadata(study, s),
            )
            for instance in metadata:
                if (_value(instance, _MANUFACTURER) or "") != SEG_MANUFACTURER:
                    continue
                for ref in (instance.get(_REFERENCED_SERIES) or {}).get("Value", []):
                    uid = _value(ref, _SERIES_UID)
                    if uid:
                        done.add(uid)
        return done

    # ------------------------------------------------------------ fetch
    def fetch_series(self, series: RemoteSeries, folder: Path) -> list[Path]:
        """Write every instance of ``series`` into ``folder`` (each file atomically, named by
        its SOP Instance UID); returns the files."""
        written: list[Path] = []

        def fetch() -> None:
            # Ask for the stored transfer syntax ("*"): the server need not transcode, and
            # medrefine's readers decode JPEG, JPEG 2000 and RLE themselves.
            datasets = self.client.iter_series(
                series.study, series.series, media_types=(("application/dicom", "*"),)
            )
            for ds in datasets:
                written.append(_save(ds, folder))

        self._call(f"fetch series {series.series}", fetch)
        if not written:
            raise InputError(
                f"{self.url}: series {series.series} returned no instances; "
                "check that it still exists on the server"
            )
        return written

    # ------------------------------------------------------------ push
    def store(self, path: Path, study: str) -> str:
        """STOW-RS the DICOM file ``path`` into ``study`` and check that the server lists it
        afterwards; returns its SOP Instance UID.

        Raises:
            InputError: the server refused the instance (an HTTP error, a Failed SOP Sequence
                in its reply, or a reply of success without the instance being stored).
        """
        ds = pydicom.dcmread(path)
        sop, series = str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID)
        reply = self._call(
            f"store {path.name}",
            lambda: self.client.store_instances([ds], study_instance_uid=study),
            refused="the server refused to store the DICOM-SEG",
        )
        failed = reply.get("FailedSOPSequence") if reply is not None else None
        if failed:
            reason = failed[0].get("FailureReason", "no reason given")
            raise InputError(
                f"{self.url}: the server refused to store {path.name} (failure reason {reason}); "
                "check the server's log and its storage rules"
            )
        # Some servers (Orthanc with a filter, a full disk) answer success and store nothing:
        # believe only what QIDO-RS lists afterwards.
        listed = self._call(
            f"look up the stored instance {sop}",
            lambda: self.client.search_for_instances(
                study, series, search_filters={"SOPInstanceUID": sop}
            ),
        )
        if not any(_value(item, _SOP_UID) == sop for item in listed):
            raise InputError(
                f"{self.url}: the server answered the store request for {path.name} but does "
                "not list the instance; it refused to keep it (check the server's log and its "
                "storage rules)"
            )
        return sop

    # ------------------------------------------------------------ errors
    def _call(
        self,
        what: str,
        request: Callable[[], T],
        *,
        not_found: str | None = None,
        refused: str | None = None,
    ) -> T:
        """Run one request; turn what can go wrong into one ``InputError`` line."""
        try:
            return request()
        except requests.exceptions.SSLError as err:
            raise InputError(
                f"{self.url}: TLS certificate check failed ({_short(err)}); pass the hospital's "
                "CA certificates with --ca-bundle FILE.pem"
            ) from err
        except (
            requests.exceptions.ConnectionError,
            requests.exceptions.Timeout,
            requests.exceptions.ChunkedEncodingError,  # the connection broke mid-reply
        ) as err:
            if _timed_out(err):
                raise ServerUnreachable(
                    self.url,
                    f"no answer within {self.config.timeout:g} s while trying to {what}",
                    "check that the server is running, or raise --pacs-timeout",
                ) from err
            raise ServerUnreachable(
                self.url, _short(err), "check the URL, the network and that the server is running"
            ) from err
        except requests.exceptions.HTTPError as err:
            status = err.response.status_code if err.response is not None else None
            if status in (401, 403):
                raise InputError(
                    f"{self.url}: the server refused the credentials (HTTP {status}) while "
                    f"trying to {what}; set {USER_ENV}/{PASSWORD_ENV} or {TOKEN_ENV}, or a "
                    f"netrc entry for {self.config.host}"
                ) from err
            if status == 404 and not_found:
                raise InputError(f"{self.url}: {not_found}") from err
            lead = refused or f"the server failed to {what}"
            raise InputError(
                f"{self.url}: {lead} (HTTP {status}: {_reply_text(err.response)})"
            ) from err
        except requests.exceptions.RequestException as err:
            raise InputError(f"{self.url}: cannot {what} ({_short(err)})") from err
        except (ValueError, KeyError, pydicom.errors.InvalidDicomError) as err:
            raise InputError(
                f"{self.url}: the server's reply to '{what}' is not valid DICOMweb "
                f"({type(err).__name__}: {err}); check that the URL is the DICOMweb root"
            ) from err


# ---------------------------------------------------------------- helpers
def _series_of(item: dict[str, Any], study: str | None) -> RemoteSeries:
    study_uid = _value(item, _STUDY_UID) or study
    series_uid = _value(item, _SERIES_UID)
    if not (study_uid and series_uid and is_uid(study_uid) and is_uid(series_uid)):
        raise InputError(
            f"the server listed a series without valid Study/Series Instance UIDs ({item!r:.200})"
        )
    n = _value(item, _N_INSTANCES)
    return RemoteSeries(
        study=study_uid,
        series=series_uid,
        modality=str(_value(item, _MODALITY) or ""),
        description=str(_value(item, _SERIES_DESCRIPTION) or ""),
        n_instances=int(n) if n is not None else None,
    )


def _value(item: dict[str, Any], tag: str) -> Any:
    values = (item.get(tag) or {}).get("Value") or []
    return values[0] if values else None


def _save(ds: Dataset, folder: Path) -> Path:
    sop = str(ds.get("SOPInstanceUID", ""))
    if not is_uid(sop):
        raise InputError(f"the server sent an instance without a valid SOP Instance UID ({sop!r})")
    path = folder / f"{sop}.dcm"
    with atomic_output(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return path


def _short(err: Exception) -> str:
    text = str(err.__context__ or err) if isinstance(err, requests.ConnectionError) else str(err)
    text = " ".join(text.split())
    markers = (
        "Connection refused",
        "Name or service not known",
        "timed out",
        "Connection reset by peer",
        "Connection broken",
        "Connection aborted",
    )
    for marker in markers:
        if marker in text:
            return marker.lower()
    return text[:160]


def _timed_out(err: Exception) -> bool:
    # A read timeout while streaming a reply comes as a ConnectionError that says so.
    return isinstance(err, requests.exceptions.Timeout) or "timed out" in str(err)


def _reply_text(response: requests.Response | None) -> str:
    if response is None:
        return "no reply"
    text = " ".join((response.text or response.reason or "").split())
    return text[:160] or str(response.reason)


def iter_unique(items: list[RemoteSeries]) -> Iterator[RemoteSeries]:
    """Each (study, series) once, in the server's order."""
    seen: set[tuple[str, str]] = set()
    for item in items:
        key = (item.study, item.series)
        if key not in seen:
            seen.add(key)
            yield item
