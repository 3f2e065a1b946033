"""What every batch does: expand the inputs, skip what is done, write each output atomically,
stop cleanly on Ctrl-C or SIGTERM, report (report.json and report.csv with provenance), show
progress, share the inputs out under torchrun, and the exit code. The commands, the web app and
the PACS bridge sit on it; each supplies a task (``engine.Task``).

    inputs    input specs (files, folders, globs, DICOM series) -> inputs, their stems and kinds
    guard     what is checked before writing into OUT (writable, its lock, no input replaced)
              and which outputs in OUT are this tool's own
    records   a failed input's line and entry, CSV tables, the output folder
    report    report.json, report.csv and the summary line
    ranks     torchrun: the ranks' group, OUT's lock for it, merging the reports
    engine    ``Job``, ``Task``, ``Batch`` (skip, make, interrupt, report) and ``open_batch``
    segment   the segmentation task (``SegmentTask``, ``segment_one``) and its output formats
"""

from medrefine.batch.engine import Batch, Job, Task, open_batch, sigterm_as_interrupt
from medrefine.batch.guard import SKIPPED

__all__ = ["SKIPPED", "Batch", "Job", "Task", "open_batch", "sigterm_as_interrupt"]
