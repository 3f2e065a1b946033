"""``medrefine segment --dicomweb URL``: pull series from a PACS, segment them, push the SEG.

Each series is fetched (WADO-RS) into ``OUT/.dicomweb/<SeriesUID>/``, segmented by the file batch
runner's ``segment_one`` (so outputs, report.json and provenance are those of any other input,
named after the Series Instance UID) and, with ``push``, its DICOM-SEG is stored back into the
same study (STOW-RS) and looked up again to make sure the server kept it. The fetched files are
removed once the series is done.

Resuming: with ``push`` a series that a medrefine SEG on the server already references is
skipped; without it, a series whose outputs are all in OUT is skipped (``overwrite`` redoes
both). A series whose SEG was written but not pushed (the server refused it) is pushed from OUT
on the next run without segmenting it again.

A server that stops answering mid-batch (refused, timed out, connection lost, and still so when
asked again) ends the run: the remaining series are not tried, report.json marks them
``failed`` with ``not_fetched``, and one line says how many; a rerun resumes with them.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from medrefine.batch import SKIPPED, Job
from medrefine.batch.guard import is_done
from medrefine.batch.inputs import InputKind
from medrefine.batch.records import echo_above_bar, failure_reason, report_failure
from medrefine.batch.segment import SegmentTask, output_names, segment_one
from medrefine.errors import InputError, MedrefineError
from medrefine.pacs.config import NON_IMAGE_MODALITIES, DicomwebConfig
from medrefine.pacs.dicomweb import DicomwebServer, RemoteSeries, ServerUnreachable, iter_unique

logger = logging.getLogger(__name__)

DEFAULT_FORMATS = "dicom-seg,json"
NOT_AN_IMAGE = "skipped (not an image)"
FETCH_DIR = ".dicomweb"


def lost_summary(records: list[dict[str, Any]], out_dir: Path) -> str:
    """The rest of the one line that ends a run whose server went away."""
    n_not_fetched = sum(bool(r.get("not_fetched")) for r in records)
    not_pushed = sum(bool(r.get("not_pushed")) for r in records)
    text = f"{n_not_fetched} of {len(records)} series not fetched"
    if not_pushed:
        text += f", {not_pushed} SEG(s) written but not pushed"
    return f"{text} (failed in {out_dir / 'report.json'}); rerun to resume"


def select_series(server: DicomwebServer, config: DicomwebConfig) -> list[RemoteSeries]:
    """The series the run covers, each once; an unknown study or series, or a named series
    that is not an image, raises ``InputError``."""
    if config.query:
        found = server.query_series(config.query, config.study)
        if not found:
            where = f" in study {config.study}" if config.study else ""
            raise InputError(
                f"{server.url}: no series{where} match --query "
                f"{' '.join(f'{k}={v}' for k, v in config.query.items())}; check the values"
            )
    else:
        found = server.study_series(config.study or "")
    if config.series:
        found = [s for s in found if s.series == config.series]
        if not found:
            raise InputError(
                f"{server.url}: series {config.series} is not in study {config.study}"
                + (" or does not match --query" if config.query else "")
                + "; check the Series Instance UID"
            )
        if found[0].modality.upper() in NON_IMAGE_MODALITIES:
            raise InputError(
                f"{server.url}: series {config.series} is a {found[0].modality} series, not an "
                "image; give an image series (CT, MR, CR, DX, US, ...)"
            )
    return list(iter_unique(found))


def plan_lines(
    server: DicomwebServer, config: DicomwebConfig, targets: list[RemoteSeries]
) -> list[str]:
    """``--list``: one line per series with what a run would do with it."""
    done_by_study: dict[str, set[str]] = {}
    lines = []
    for s in targets:
        if s.modality.upper() in NON_IMAGE_MODALITIES:
            action = "skip (not an image)"
        elif config.push and not config.overwrite:
            if s.study not in done_by_study:
                done_by_study[s.study] = server.segmented_series(s.study)
            action = "skip (SEG on server)" if s.series in done_by_study[s.study] else "segment"
        else:
            action = "segment"
        n = "?" if s.n_instances is None else s.n_instances
        lines.append(
            f"{action}\t{s.study}\t{s.series}\t{s.modality}\t{n} instance(s)\t{s.description}"
        )
    return lines


class SeriesRunner:
    """The batch task of a pull (``batch.Task``): fetch, segment and push one series at a
    time (a job's ``data`` is its ``RemoteSeries``); failures become report records. It
    decides what is done itself (a SEG on the server, or the outputs in OUT), so ``outputs``
    names none for the engine."""

    name, unit = "segment", "series"
    columns, weights = SegmentTask.columns, SegmentTask.weights

    def __init__(
        self,
        server: DicomwebServer,
        config: DicomwebConfig,
        pipe,
        out_dir: Path,
        formats: list[str],
        file_extra: dict[str, Any],
        earlier: dict[str, str],
        *,
        allow_gaps: bool = False,
    ) -> None:
        self.server, self.config, self.pipe = server, config, pipe
        self.out_dir, self.formats, self.file_extra = out_dir, formats, file_extra
        self.allow_gaps = allow_gaps  # a series with a missing slice: see read_image
        self._done_on_server: dict[str, set[str]] = {}
        self.earlier = earlier  # what earlier runs wrote into OUT
        self.lost: ServerUnreachable | None = None  # set once the server stopped answering

    @staticmethod
    def jobs(targets: list[RemoteSeries]) -> list[Job]:
        return [Job(s.series, s.series, data=s) for s in targets]

    def outputs(self, job: Job) -> list[str]:
        return []

    def make(self, job: Job, echo) -> dict[str, Any]:
        if self.lost is None:
            return self.process(job.data)
        return self.not_reached(job.data)  # the server is gone: no request for the rest

    def report_fields(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        fields = {
            "n_not_image": sum(r["status"] == NOT_AN_IMAGE for r in records),
            "n_pushed": sum(bool(r.get("pushed")) for r in records),
            "n_not_fetched": sum(bool(r.get("not_fetched")) for r in records),
        }
        if self.lost is not None:
            fields["unreachable"] = self.lost.why
        return fields

    def process(self, series: RemoteSeries) -> dict[str, Any]:
        t0 = time.perf_counter()
        base = {"input": series.series, "study": series.study, "modality": series.modality}
        if series.modality.upper() in NON_IMAGE_MODALITIES:
            # Listed in the report and counted in the summary, not printed one by one: a
            # study holds its SR and SEG series (medrefine's own, after a push) on every run.
            reason = f"{series.modality} series holds no image to segment"
            logger.info("series %s: %s; skipped", series.series, reason)
            return {**base, "status": NOT_AN_IMAGE, "error": reason, "seconds": 0.0}
        record: dict[str, Any] = {}
        try:
            if self.config.push and not self.config.overwrite and self._seg_on_server(series):
                logger.info("series %s: a medrefine SEG is on the server; skipped", series.series)
                return {**base, "status": SKIPPED, "seg_on_server": True, "seconds": 0.0}
            local = self._local_outputs(series)
            if local is not None and not self.config.overwrite:
                record = {**base, "status": SKIPPED, "outputs": local, "seconds": 0.0}
            else:
                record = {**base, **self._segment(series)}
            if record["status"] != "failed" and self.config.push:
                seg_path = self.out_dir / f"{series.series}.dcm"
                record["seg_sop_instance_uid"] = self.server.store(seg_path, series.study)
                record["pushed"] = True
                if record["status"] == SKIPPED:  # segmented before, pushed now
                    record["status"] = "ok"
                self._done_on_server.setdefault(series.study, set()).add(series.series)
        except MedrefineError as err:
            reason = failure_reason(err)
            failed = {**base, "status": "failed", "error": reason, "seconds": _since(t0)}
            if record.get("outputs"):  # written but not pushed: the next run pushes them
                failed["outputs"] = record["outputs"]
            if isinstance(err, ServerUnreachable) and not self.server.reachable():
                # Gone, not just this request: one line for the whole run (``commands.pull``), not
                # one per remaining series.
                self.lost = err
                failed["not_pushed" if record.get("outputs") else "not_fetched"] = True
                return failed
            report_failure(f"series {series.series}", reason, echo_above_bar)
            return failed
        record["seconds"] = _since(t0)
        return record

    def not_reached(self, series: RemoteSeries) -> dict[str, Any]:
        """The record of a series after the server went away, without asking the server."""
        base = {"input": series.series, "study": series.study, "modality": series.modality}
        if series.modality.upper() in NON_IMAGE_MODALITIES:
            return self.process(series)  # needs no request
        if not self.config.overwrite:  # done, as far as is known without asking
            if series.series in self._done_on_server.get(series.study, ()):
                return {**base, "status": SKIPPED, "seg_on_server": True, "seconds": 0.0}
            local = None if self.config.push else self._local_outputs(series)
            if local is not None:
                return {**base, "status": SKIPPED, "outputs": local, "seconds": 0.0}
        why = self.lost.why if self.lost is not None else "the server went away"
        return {
            **base,
            "status": "failed",
            "error": f"not fetched: cannot reach {self.config.url} ({why})",
            "not_fetched": True,
            "seconds": 0.0,
        }

    def _seg_on_server(self, series: RemoteSeries) -> bool:
        if series.study not in self._done_on_server:
            self._done_on_server[series.study] = self.server.segmented_series(series.study)
        return series.series in self._done_on_server[series.study]

    def _local_outputs(self, series: RemoteSeries) -> list[str] | None:
        kind = InputKind(volume=series.n_instances != 1, dicom=True)
        names = output_names(series.series, self.formats, kind)
        return names if is_done(names, series.series, self.out_dir, self.earlier) else None

    def _segment(self, series: RemoteSeries) -> dict[str, Any]:
        folder = self.out_dir / FETCH_DIR / series.series
        shutil.rmtree(folder, ignore_errors=True)  # a previous run's leftovers
        t0 = time.perf_counter()
        try:
            files = self.server.fetch_series(series, folder)
            fetch_s = _since(t0)

            def echo(line: str) -> None:  # name the series, not the scratch folder
                echo_above_bar(line.replace(str(folder), f"series {series.series}"))

            record = segment_one(
                self.pipe,
                folder,
                series.series,
                self.out_dir,
                self.formats,
                echo,
                self.file_extra,
                allow_gaps=self.allow_gaps,
            )
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            _remove_if_empty(self.out_dir / FETCH_DIR)
        record.pop("input", None)
        record["n_instances"] = len(files)
        record.setdefault("timings", {})["fetch"] = fetch_s
        return record


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


def _since(t0: float) -> float:
    return time.perf_counter() - t0
