"""A batch's report: OUT/report.json (the run's head, every input's record, the ``written`` map
a re-run reads to know what is done) and OUT/report.csv (one row per input, then the
provenance columns), and the one summary line a command prints."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from medrefine import __version__
from medrefine.batch.guard import SKIPPED, written_outputs
from medrefine.batch.records import write_csv, write_json


def finish_report(
    head: dict[str, Any],
    records: list[dict[str, Any]],
    t_start: float,
    *,
    interrupted: bool = False,
    left: int = 0,
    earlier: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The run report; ``written`` maps every output in OUT that medrefine wrote (this run's
    and ``earlier``'s) to its input, which is how a re-run knows what is done. An
    ``interrupted`` run counts the ``left`` inputs it had as ``n_not_started`` less those
    recorded."""
    counts = {s: sum(r["status"] == s for r in records) for s in ("ok", SKIPPED, "failed")}
    report = {
        **head,
        "seconds": time.perf_counter() - t_start,
        "n_inputs": len(records),
        "n_ok": counts["ok"],
        "n_skipped": counts[SKIPPED],
        "n_failed": counts["failed"],
        "files": records,
        "written": written_outputs(earlier or {}, records),
    }
    if interrupted:
        report["interrupted"] = True
        report["n_not_started"] = max(left - len(records), 0)
    return report


def run_head(
    command: str,
    started: str,
    out: Path | str,
    provenance: dict[str, Any],
    *,
    world_size: int,
    formats: list[str] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """The head of a command's report.json: the command, when it started, its own ``fields``
    (inputs, options, in order), the output folder, the output formats (where the command has
    them), how many processes ran it and the run's provenance."""
    head = {"command": command, "started": started, **fields, "out": str(out)}
    if formats is not None:
        head["formats"] = formats
    return {**head, "world_size": world_size, "provenance": provenance}


def provenance_cells(prov: dict[str, Any], weights: tuple[str, ...]) -> dict[str, Any]:
    """The provenance columns of report.csv: the medrefine version, each weights file's
    SHA-256 (``<name>_sha256`` for each of ``weights``) and the seed."""
    files = prov.get("weights") or {}
    return {
        "medrefine_version": prov.get("medrefine_version") or __version__,
        **{f"{name}_sha256": (files.get(name) or {}).get("sha256") for name in weights},
        "seed": prov.get("seed"),
    }


def weights_extra(prov: dict[str, Any]) -> dict[str, Any]:
    """What each input's JSON summary adds from the run's provenance: the weights' SHA-256
    by model (the ``file_extra`` of ``segment.SegmentTask`` and of the PACS front ends)."""
    return {"weights": {k: v["sha256"] for k, v in prov["weights"].items()}}


def write_reports(
    out_dir: Path,
    report: dict[str, Any],
    columns: list[str],
    weights: tuple[str, ...] = ("coarse", "refiner"),
) -> None:
    """OUT/report.json (everything) and OUT/report.csv (one row per input: ``columns``, then
    the provenance columns)."""
    write_json(out_dir / "report.json", report)
    constant = provenance_cells(report.get("provenance") or {}, weights)
    rows = [{**r, **constant} for r in report["files"]]
    write_csv(out_dir / "report.csv", rows, [*columns, *constant])


def summary_line(report: dict[str, Any], lead: str) -> str:
    """``lead`` (e.g. "segmented 3 of 4 inputs into out") with what was skipped and failed."""
    line = lead
    if report["n_skipped"]:
        line += f"; {report['n_skipped']} already done (skipped)"
    if report["n_failed"]:
        line += f"; {report['n_failed']} failed (listed in report.json)"
    return line
