"""The batch engine: what every batch does, whatever it makes.

A task supplies its jobs (``Job``: what a job reads, its outputs' stem, what else it needs), the
output names it expects for a job (``Task.outputs``) and how to make them (``Task.make``, which
writes each output atomically and returns the job's report entry). ``Batch`` does the rest:

- skip a job whose outputs are all in OUT, written from its input by an earlier run (as that
  run's report.json ``written`` map says; ``overwrite`` redoes it);
- go on past a job that fails: one line on stderr, a ``failed`` entry, exit code 2;
- stop cleanly on Ctrl-C or SIGTERM: the report so far is written, marked ``interrupted``,
  and the ``KeyboardInterrupt`` goes on to the caller (outputs are renamed into place only
  once whole, so no half file is left);
- write OUT/report.json and OUT/report.csv with the run's provenance;
- show a progress bar on a terminal;
- under ``torchrun`` take this rank's share of the jobs (rank r takes jobs r, r+N, ...) and
  let rank 0 merge the ranks' reports.

``open_batch`` joins the torchrun group and holds OUT's lock for the run.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from medrefine.batch import ranks as ranks_
from medrefine.batch.guard import SKIPPED, earlier_outputs, is_done
from medrefine.batch.records import echo_above_bar, failure_record, report_failure, write_json
from medrefine.batch.report import finish_report, write_reports
from medrefine.errors import MedrefineError
from medrefine.training.distributed import DistInfo

logger = logging.getLogger(__name__)

Echo = Callable[[str], None]


@dataclass(frozen=True)
class Job:
    """One unit of a batch.

    ``source``: what the job reads (a file, a folder holding a DICOM series, a Series UID); a
    re-run knows the job by it. ``stem``: its outputs' stem. ``data``: whatever else the task
    needs (a mask, boxes, a received series). ``fields``: report entry fields that follow
    ``input`` in its skipped and failed entries too. ``name``: how the report names the input
    (default ``source``)."""

    source: Path | str
    stem: str
    data: Any = None
    fields: dict[str, Any] = field(default_factory=dict)
    name: str | None = None

    @property
    def label(self) -> str:
        return self.name if self.name is not None else str(self.source)


class Task(Protocol):
    """What a batch makes. ``name`` and ``unit`` label the progress bar; ``columns`` are
    report.csv's columns before the provenance ones; ``weights`` name the weights files whose
    SHA-256 report.csv gives (``<name>_sha256``)."""

    name: str
    unit: str
    columns: list[str]
    weights: tuple[str, ...]

    def outputs(self, job: Job) -> list[str]:
        """The names in OUT that make ``job`` done ([]: never skipped). May raise a
        ``MedrefineError`` (an unreadable header): the job is then made, and its failure
        reported."""
        ...

    def make(self, job: Job, echo: Echo) -> dict[str, Any]:
        """Make and write ``job``'s outputs; return its report entry (``input``, ``status``
        ``ok`` or ``failed``, ``outputs``, ``seconds``...). A raised exception becomes a
        ``failed`` entry."""
        ...


class Batch:
    """One batch into ``out_dir``: its records so far, and the report they make.

    ``ranks``: the torchrun group (``open_batch`` joins it). ``quiet``: no progress bar.
    ``echo``: where a failure's line goes (default stderr, above the bar). ``progress``: called
    as ``progress(i, n, job)`` before each job (the web app's progress), instead of the bar."""

    def __init__(
        self,
        out_dir: Path,
        *,
        overwrite: bool = False,
        quiet: bool = False,
        ranks: DistInfo | None = None,
        echo: Echo = echo_above_bar,
        progress: Callable[[int, int, Job], None] | None = None,
        device: str = "auto",
    ) -> None:
        self.out_dir, self.overwrite, self.quiet = out_dir, overwrite, quiet
        self.ranks = ranks or DistInfo()
        self.echo, self.progress, self.device = echo, progress, device
        self.earlier = earlier_outputs(out_dir)  # what earlier runs wrote, before this one writes
        self.records: list[dict[str, Any]] = []
        self.t_start = time.perf_counter()

    # ------------------------------------------------------------ records
    def add_problems(self, problems: list[tuple[str, str]]) -> None:
        """Entries that are no job (no such file, a broken link...): reported as failed, once
        (on rank 0)."""
        if not self.ranks.is_main:
            return
        for spec, reason in problems:
            report_failure(spec, reason, self.echo)
            self.records.append({"input": spec, "status": "failed", "error": reason})

    def process(self, task: Task, job: Job) -> dict[str, Any]:
        """One job: skipped when it is done, else made; its record is kept and returned."""
        t0 = time.perf_counter()
        record = None if self.overwrite else self._done_record(task, job)
        if record is None:
            try:
                record = task.make(job, self.echo)
            except Exception as err:  # a batch goes on past a bad job (Ctrl-C still stops it)
                record = failure_record(
                    job.label, err, t0, self.echo, source=job.source, **job.fields
                )
        record["rank"] = self.ranks.rank
        self.records.append(record)
        return record

    def _done_record(self, task: Task, job: Job) -> dict[str, Any] | None:
        try:
            names = task.outputs(job)
        except MedrefineError:
            return None  # unreadable: made, so that its failure is reported
        if not is_done(names, job.source, self.out_dir, self.earlier):
            return None
        logger.info("%s: outputs already in %s; skipped", job.label, self.out_dir)
        return {"input": job.label, **job.fields, "status": SKIPPED, "outputs": names,
                "seconds": 0.0}  # fmt: skip

    # ------------------------------------------------------------ the loop
    def run(self, task: Task, jobs: list[Job], head: dict[str, Any]) -> dict[str, Any]:
        """Process this rank's share of ``jobs`` and write the report (rank 0 merges the
        ranks'); returns it (on the other ranks, their own part). Ctrl-C or SIGTERM writes the
        report so far, marked interrupted, and raises ``KeyboardInterrupt``."""
        jobs = jobs[self.ranks.rank :: self.ranks.world_size]
        left = len(self.records) + len(jobs)
        try:
            with sigterm_as_interrupt():
                for i, job in enumerate(self._bar(task, jobs)):
                    if self.progress is not None:
                        self.progress(i, len(jobs), job)
                    self.process(task, job)
        except KeyboardInterrupt:
            report = self.report(task, head, interrupted=True, left=left)
            if self.ranks.enabled:  # the other ranks may be gone: no barrier, this part only
                write_json(ranks_.part_path(self.out_dir, self.ranks.rank), report)
            else:
                self.write(task, report)
            raise
        report = self.report(task, head)
        if self.ranks.enabled:
            merged = ranks_.gather_records(self.out_dir, report, self.ranks)
            if merged is None:
                return report
            report = self.report(task, head, records=merged)
        self.write(task, report)
        ranks_.remove_parts(self.out_dir, self.ranks)
        return report

    def report(
        self,
        task: Task,
        head: dict[str, Any],
        *,
        interrupted: bool = False,
        left: int = 0,
        records: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """The report of ``records`` (default: this batch's so far); a task's
        ``report_fields(records)``, when it has one, adds its own counts."""
        records = self.records if records is None else records
        report = finish_report(
            head, records, self.t_start, interrupted=interrupted, left=left, earlier=self.earlier
        )
        fields = getattr(task, "report_fields", None)
        if fields is not None:
            report.update(fields(records))
        return report

    def write(self, task: Task, report: dict[str, Any]) -> None:
        """OUT/report.json and OUT/report.csv."""
        write_reports(self.out_dir, report, task.columns, task.weights)

    def exit_code(self, report: dict[str, Any]) -> int:
        """0 when every input is done, 2 when any failed (on any rank)."""
        n_failed = report["n_failed"] if self.ranks.is_main else 0
        return 2 if ranks_.all_ranks_sum(n_failed, self.ranks) else 0

    def _bar(self, task: Task, jobs: list[Job]):
        quiet = self.quiet or self.progress is not None or not self.ranks.is_main
        return tqdm(jobs, desc=task.name, unit=task.unit, disable=True if quiet else None)


@contextlib.contextmanager
def open_batch(
    out_dir: Path,
    *,
    overwrite: bool = False,
    quiet: bool = False,
    device: str = "auto",
    torchrun: bool = True,
) -> Iterator[Batch]:
    """A ``Batch`` into ``out_dir`` while this process holds its lock; under torchrun (with
    ``torchrun``) in the ranks' group, ``Batch.device`` then being this rank's device."""
    info, device = ranks_.start_distributed(device) if torchrun else (DistInfo(), device)
    try:
        with ranks_.lock_for_run(out_dir, info):
            yield Batch(out_dir, overwrite=overwrite, quiet=quiet, ranks=info, device=device)
    finally:
        ranks_.stop_distributed(info)


@contextlib.contextmanager
def sigterm_as_interrupt(once: bool = False) -> Iterator[None]:
    """SIGTERM (a scheduler's stop, ``kill``) ends the batch like Ctrl-C: report written.
    ``once``: only the first SIGTERM interrupts, later ones are ignored (they would cut the
    clean-up that the first set off short). Outside the main thread: nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    interrupted = False

    def handler(signum, frame):
        nonlocal interrupted
        if once and interrupted:
            return
        interrupted = True
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
