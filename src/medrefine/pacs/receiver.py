"""A DICOM storage SCP (pynetdicom) that files received images by series and knows when a series
is complete.

Instances land in ``OUT/received/<StudyUID>/<SeriesUID>/<SOPUID>.dcm`` (each written under a
temporary name and renamed; UIDs are checked to be digits and dots before they name anything,
so a peer cannot write outside OUT). DIMSE has no "end of series" message, so a series counts
as complete when

* no instance of it arrived for ``quiet_seconds``, and
* every association that sent part of it has ended with a normal release: a series that an
  aborted or dropped association touched is incomplete until a later association sends to it
  again and is released.

A series that is still growing, or was cut off, is never handed out for segmenting.

What it lets in: only associations that call its own AE title (others are rejected, "called AE
title not recognised", and logged), and at most ``max_store_gb`` under OUT/received (counted
from what is there at start): a C-STORE that would pass it is refused with 0xA700 (out of
resources), logged once per association.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medrefine.errors import ConfigError, MedrefineError
from medrefine.io import atomic_output
from medrefine.pacs.config import ListenConfig, is_uid

logger = logging.getLogger(__name__)

RECEIVED_DIR = "received"
ASSOCIATION_LOG = "associations.jsonl"

# C-STORE status codes (PS3.4 B.2.3)
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000


def storage_sop_classes() -> list[str]:
    """The image SOP classes accepted: CT, MR, CR, DX, US and secondary capture."""
    from pynetdicom import sop_class as sc

    return [
        sc.CTImageStorage,
        sc.EnhancedCTImageStorage,
        sc.MRImageStorage,
        sc.EnhancedMRImageStorage,
        sc.ComputedRadiographyImageStorage,
        sc.DigitalXRayImageStorageForPresentation,
        sc.DigitalXRayImageStorageForProcessing,
        sc.UltrasoundImageStorage,
        sc.UltrasoundMultiFrameImageStorage,
        sc.SecondaryCaptureImageStorage,
        sc.MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
        sc.MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
        sc.MultiFrameTrueColorSecondaryCaptureImageStorage,
    ]


def transfer_syntaxes() -> list[str]:
    """Uncompressed, deflated, and the compressions medrefine's readers decode."""
    from pydicom import uid

    return [
        uid.ExplicitVRLittleEndian,
        uid.ImplicitVRLittleEndian,
        uid.DeflatedExplicitVRLittleEndian,
        uid.ExplicitVRBigEndian,
        uid.JPEGBaseline8Bit,
        uid.JPEGExtended12Bit,
        uid.JPEGLossless,
        uid.JPEGLosslessSV1,
        uid.JPEG2000Lossless,
        uid.JPEG2000,
        uid.RLELossless,
    ]


@dataclass
class SeriesState:
    """What arrived of one series, and who is still sending it."""

    study: str
    series: str
    folder: Path
    instances: set[str] = field(default_factory=set)
    received: int = 0  # C-STOREs accepted (a resent instance counts again)
    last_received: float = 0.0
    open_associations: set[int] = field(default_factory=set)
    cut_off: bool = False  # an association that sent to it ended without a release
    segmented_at: int = 0  # ``received`` when it was last handed out for segmenting
    senders: set[str] = field(default_factory=set)


@dataclass
class Association:
    number: int
    peer: str
    series: set[str] = field(default_factory=set)
    stored: int = 0
    failed: int = 0
    released: bool = False
    over_quota: bool = False  # the quota refusal was logged for this association


class SeriesTracker:
    """Thread-safe book of received series (pynetdicom calls in from its own threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._series: dict[str, SeriesState] = {}

    def stored(
        self, assoc: int, peer: str, study: str, series: str, sop: str, folder: Path, now: float
    ) -> None:
        with self._lock:
            state = self._series.setdefault(series, SeriesState(study, series, folder))
            state.instances.add(sop)
            state.received += 1
            state.last_received = now
            state.open_associations.add(assoc)
            state.senders.add(peer)

    def association_ended(self, assoc: int, series: set[str], released: bool) -> None:
        with self._lock:
            for uid in series:
                state = self._series.get(uid)
                if state is None:
                    continue
                state.open_associations.discard(assoc)
                state.cut_off = not released

    def take_ready(self, now: float, quiet_seconds: float) -> list[SeriesState]:
        """Series complete since they were last handed out; each is handed out once per
        complete transfer."""
        ready = []
        with self._lock:
            for state in self._series.values():
                if (
                    state.received > state.segmented_at
                    and not state.open_associations
                    and not state.cut_off
                    and now - state.last_received >= quiet_seconds
                ):
                    state.segmented_at = state.received
                    ready.append(state)
        return ready

    def waiting(self) -> list[SeriesState]:
        """Series received but not (or not since their last instance) handed out."""
        with self._lock:
            return [s for s in self._series.values() if s.received > s.segmented_at]


class StoreQuota:
    """Bytes under OUT/received against ``limit`` (thread-safe: associations run in parallel)."""

    def __init__(self, folder: Path, limit: int) -> None:
        self.limit = limit
        self.used = folder_bytes(folder)
        self._lock = threading.Lock()

    def reserve(self, path: Path, size: int) -> int | None:
        """Room for ``size`` bytes written to ``path`` (a resent instance replaces its file):
        the change in bytes to ``release`` if the write fails, or None past the limit."""
        try:
            old = path.stat().st_size
        except OSError:
            old = 0
        with self._lock:
            delta = size - old
            if delta > 0 and self.used + delta > self.limit:
                return None
            self.used += delta
            return delta

    def release(self, delta: int) -> None:
        with self._lock:
            self.used -= delta


def folder_bytes(folder: Path) -> int:
    """The bytes of the files under ``folder`` (0 if there is none)."""
    total = 0
    for path in folder.rglob("*") if folder.is_dir() else ():
        try:
            if path.is_file() and not path.is_symlink():
                total += path.stat().st_size
        except OSError:
            pass
    return total


def _gb(n_bytes: float) -> str:
    return f"{n_bytes / 1e9:.3g} GB"


class StorageSCP:
    """The pynetdicom server: C-ECHO, C-STORE of images into OUT, per-association logging."""

    def __init__(self, config: ListenConfig, out_dir: Path) -> None:
        self.config = config
        self.out_dir = out_dir
        self.tracker = SeriesTracker()
        self._associations: dict[int, Association] = {}
        self._lock = threading.Lock()
        self._count = 0
        self._server = None
        self.quota: StoreQuota | None = None

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        from pynetdicom import AE, evt
        from pynetdicom.sop_class import Verification

        self.quota = StoreQuota(self.out_dir / RECEIVED_DIR, self.config.max_store_bytes)
        if self.quota.used >= self.quota.limit:
            logger.warning(
                "%s already holds %s, the --max-store-gb %g quota: every C-STORE will be "
                "refused; remove segmented series from it or raise --max-store-gb",
                self.out_dir / RECEIVED_DIR,
                _gb(self.quota.used),
                self.config.max_store_gb,
            )
        ae = AE(ae_title=self.config.ae_title)
        ae.require_called_aet = True  # a peer that calls another AE title is rejected
        # A peer that connects and goes silent holds an association thread only this long.
        ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = self.config.timeout
        syntaxes = transfer_syntaxes()
        for uid in storage_sop_classes():
            ae.add_supported_context(uid, syntaxes)
        ae.add_supported_context(Verification)
        handlers = [
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_RELEASED, self._on_released),
            (evt.EVT_CONN_CLOSE, self._on_closed),
        ]
        address = (self.config.bind, self.config.port)
        try:
            self._server = ae.start_server(address, block=False, evt_handlers=handlers)
        except OSError as err:
            raise ConfigError(
                f"--port {self.config.port}: cannot listen on {self.config.bind}:"
                f"{self.config.port} ({err.strerror or err}); pick a free port"
            ) from err

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    # ------------------------------------------------------------ events
    def _on_accepted(self, event) -> None:
        requestor = event.assoc.requestor
        peer = f"{requestor.ae_title}@{requestor.address}:{requestor.port}"
        with self._lock:
            self._count += 1
            number = self._count
            self._associations[id(event.assoc)] = Association(number, peer)
        logger.info("association %d from %s accepted", number, peer)

    def _on_rejected(self, event) -> None:
        requestor = event.assoc.requestor
        peer = f"{requestor.ae_title}@{requestor.address}:{requestor.port}"
        called = str(getattr(requestor.primitive, "called_ae_title", "") or "").strip()
        if called != self.config.ae_title:
            why = f"it called AE title {called!r}, this receiver is {self.config.ae_title!r}"
        else:  # pynetdicom's other rejection: more associations than it takes at once
            why = "too many associations at once"
        logger.warning("association from %s rejected: %s", peer, why)
        self._log_association(Association(0, peer), rejected=why)

    def _on_echo(self, event) -> int:
        info = self._associations.get(id(event.assoc))
        logger.info("association %d: C-ECHO answered", info.number if info else 0)
        return SUCCESS

    def _on_store(self, event) -> int:
        info = self._associations.get(id(event.assoc))
        try:
            ds = event.dataset
            uids = [str(ds.get(k, "")) for k in ("StudyInstanceUID", "SeriesInstanceUID")]
            sop = str(event.request.AffectedSOPInstanceUID or "")
            if not all(is_uid(u) for u in [*uids, sop]):
                logger.warning("C-STORE refused: instance without valid Study/Series/SOP UIDs")
                return self._failed(info, CANNOT_UNDERSTAND)
            folder = self.out_dir / RECEIVED_DIR / uids[0] / uids[1]
            data = event.encoded_dataset(include_meta=True)
            path = folder / f"{sop}.dcm"
            delta = self.quota.reserve(path, len(data)) if self.quota else 0
            if delta is None:
                return self._over_quota(info, len(data))
            try:
                with atomic_output(path) as tmp:
                    tmp.write_bytes(data)
            except BaseException:
                if self.quota:
                    self.quota.release(delta)
                raise
        except MedrefineError as err:  # the disk is full or not writable
            logger.error("C-STORE refused: cannot store the instance (%s)", err)
            return self._failed(info, OUT_OF_RESOURCES)
        except Exception as err:  # a dataset pydicom cannot decode
            logger.warning("C-STORE refused: cannot read the instance (%s)", err)
            return self._failed(info, CANNOT_UNDERSTAND)
        if info is not None:
            info.series.add(uids[1])
            info.stored += 1
        peer = info.peer if info else "?"
        self.tracker.stored(id(event.assoc), peer, uids[0], uids[1], sop, folder, time.monotonic())
        return SUCCESS

    def _over_quota(self, info: Association | None, size: int) -> int:
        if info is None or not info.over_quota:
            logger.error(
                "association %d: C-STORE refused (0xA700, out of resources): %s holds %s and "
                "this instance (%s) would pass the --max-store-gb %g quota; remove segmented "
                "series from it or raise --max-store-gb (further refusals of this association "
                "are counted, not logged)",
                info.number if info else 0,
                self.out_dir / RECEIVED_DIR,
                _gb(self.quota.used if self.quota else 0),
                _gb(size),
                self.config.max_store_gb,
            )
            if info is not None:
                info.over_quota = True
        return self._failed(info, OUT_OF_RESOURCES)

    def _failed(self, info: Association | None, status: int) -> int:
        if info is not None:
            info.failed += 1
        return status

    def _on_released(self, event) -> None:
        info = self._associations.get(id(event.assoc))
        if info is not None:
            info.released = True

    def _on_closed(self, event) -> None:
        with self._lock:
            info = self._associations.pop(id(event.assoc), None)
        if info is None:
            return
        self.tracker.association_ended(id(event.assoc), info.series, info.released)
        how = "released" if info.released else "aborted or dropped"
        logger.info(
            "association %d from %s %s: %d instance(s) stored, %d refused, %d series%s",
            info.number,
            info.peer,
            how,
            info.stored,
            info.failed,
            len(info.series),
            "" if info.released or not info.series else " (left incomplete, not segmented)",
        )
        self._log_association(info)

    def _log_association(self, info: Association, rejected: str | None = None) -> None:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "association": info.number or None,
            "peer": info.peer,
            "released": info.released,
            "stored": info.stored,
            "refused": info.failed,
            "series": sorted(info.series),
        }
        if rejected:
            entry["rejected"] = rejected
        try:
            with (self.out_dir / ASSOCIATION_LOG).open("a") as fh:
                fh.write(json.dumps(entry) + "\n")
        except OSError as err:
            logger.error("%s: cannot append the association log (%s)", self.out_dir, err)
