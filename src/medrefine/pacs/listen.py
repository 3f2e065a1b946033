"""The ``listen`` service: receive images over DIMSE, segment each series once it is complete,
send the DICOM-SEG onward.

The storage SCP (``receiver.py``) runs in pynetdicom's threads; segmenting runs here, in the
caller's thread, one series at a time, through the file batch runner's ``segment_one`` (a
received series is a folder of DICOM files like any other input). Outputs are named after the
Series Instance UID; OUT/report.json lists every series segmented so far and is rewritten after
each one. Everything goes under OUT: ``received/``, the outputs, the reports and
``associations.jsonl``.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from medrefine.batch import Batch, Job
from medrefine.batch.inputs import InputKind
from medrefine.batch.records import failure_reason, report_failure
from medrefine.batch.segment import SegmentTask, output_names, segment_one
from medrefine.errors import MedrefineError
from medrefine.pacs.config import ListenConfig
from medrefine.pacs.receiver import SeriesState, StorageSCP
from medrefine.pacs.sender import send_file

logger = logging.getLogger(__name__)


class Listener:
    """A storage SCP plus the loop that segments the series it completes (a batch whose jobs
    arrive: each complete series is one, through ``batch.Batch``, so a series whose outputs an
    earlier run wrote is skipped unless ``overwrite``)."""

    name, unit = "listen", "series"
    columns, weights = SegmentTask.columns, SegmentTask.weights

    def __init__(
        self,
        config: ListenConfig,
        out_dir: Path,
        pipe,
        formats: list[str],
        head: dict[str, Any],
        file_extra: dict[str, Any] | None = None,
        *,
        overwrite: bool = False,
    ) -> None:
        self.config, self.out_dir, self.pipe, self.formats = config, out_dir, pipe, formats
        self.head, self.file_extra = head, file_extra
        self.scp = StorageSCP(config, out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.batch = Batch(out_dir, overwrite=overwrite, quiet=True, echo=logger.error)
        self.records = self.batch.records
        self.interrupted = False  # a second Ctrl-C stopped it mid-series

    def start(self) -> None:
        self.scp.start()
        logger.info(
            "listening on %s:%d as %s; outputs in %s",
            self.config.bind,
            self.config.port,
            self.config.ae_title,
            self.out_dir,
        )

    def serve(self, stop: threading.Event, poll_seconds: float = 0.2) -> None:
        """Segment complete series until ``stop`` is set (then return; call ``close``)."""
        while not stop.is_set():
            for state in self.scp.tracker.take_ready(time.monotonic(), self.config.quiet_seconds):
                if stop.is_set():
                    break
                self.process(state)
                self.write_report()
            stop.wait(poll_seconds)

    def close(self) -> list[SeriesState]:
        """Stop receiving, write the report; returns the series left unsegmented."""
        self.scp.stop()
        waiting = self.scp.tracker.waiting()
        for state in waiting:
            logger.warning(
                "series %s: %d instance(s) received but not segmented (incomplete or still "
                "in its quiet period at shutdown); kept in %s",
                state.series,
                len(state.instances),
                state.folder,
            )
        self.write_report(waiting)
        return waiting

    def process(self, state: SeriesState) -> dict[str, Any]:
        """Segment one complete series (and send its SEG), or skip it when done; never
        raises a MedrefineError. A second Ctrl-C or SIGTERM stops it mid-series: the report
        then says ``interrupted``."""
        logger.info(
            "series %s complete (%d instance(s)); segmenting", state.series, len(state.instances)
        )
        job = Job(state.series, state.series, data=state, fields={"study": state.study})
        try:
            return self.batch.process(self, job)
        except KeyboardInterrupt:
            self.interrupted = True
            raise

    # ------------------------------------------------------------ the batch task
    def outputs(self, job: Job) -> list[str]:
        kind = InputKind(volume=len(job.data.instances) != 1, dicom=True)
        return output_names(job.stem, self.formats, kind)

    def make(self, job: Job, echo) -> dict[str, Any]:
        state: SeriesState = job.data
        t0 = time.perf_counter()

        def echo_series(line: str) -> None:
            echo(line.replace(str(state.folder), f"series {state.series}"))

        record = segment_one(
            self.pipe, state.folder, job.stem, self.out_dir, self.formats, echo_series,
            self.file_extra,
        )  # fmt: skip
        record.update(
            input=state.series,
            study=state.study,
            n_instances=len(state.instances),
            senders=sorted(state.senders),
        )
        destination = self.config.send_to
        if record["status"] == "ok" and destination is not None:
            seg_path = self.out_dir / f"{state.series}.dcm"
            try:
                send_file(seg_path, destination, self.config.ae_title, self.config.timeout)
                record["sent_to"] = str(destination)
            except MedrefineError as err:
                reason = failure_reason(err)
                report_failure(f"series {state.series}", reason)
                record.update(status="failed", error=reason)
        record["seconds"] = time.perf_counter() - t0
        return record

    def write_report(self, waiting: list[SeriesState] | None = None) -> None:
        """OUT/report.json and report.csv of the series so far; at the end (``waiting``: the
        series left unsegmented) marked interrupted when a series was cut off or left."""
        stopped_short = waiting is not None and (self.interrupted or bool(waiting))
        left = len(self.records) + len(waiting or ())
        report = self.batch.report(self, self.head, interrupted=stopped_short, left=left)
        if waiting is not None:
            report["not_segmented"] = [
                {"series": s.series, "study": s.study, "instances": len(s.instances)}
                for s in waiting
            ]
        self.batch.write(self, report)
