"""A batch under ``torchrun --nproc_per_node=N``: the ranks join one gloo group (it carries only
a barrier and a sum), rank 0 holds OUT's lock for its group, each rank writes its part of the
report (``report.rank<r>.json``) and rank 0 merges the parts after the barrier."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from medrefine.batch.guard import out_lock
from medrefine.batch.records import write_json
from medrefine.errors import MedrefineError, OutputError
from medrefine.training.distributed import DistInfo

# A rank that finishes early waits at the barrier for the slowest one; gloo's default of
# 30 minutes is too short for big batches of volumes.
BARRIER_TIMEOUT = timedelta(hours=48)


def start_distributed(device: str) -> tuple[DistInfo, str]:
    """Join the torchrun group; one process (``DistInfo()``) without torchrun. Returns the
    group and the device this rank runs on: on GPUs each rank takes the GPU of its LOCAL_RANK
    (ranks share GPUs when there are more ranks than GPUs), else ``device``."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistInfo(), device
    import torch
    import torch.distributed as dist

    from medrefine.training.distributed import init_distributed

    if not dist.is_initialized():
        dist.init_process_group(backend="gloo", timeout=BARRIER_TIMEOUT)
    info = init_distributed(torch.device("cpu"))
    if device in ("auto", "cuda") and torch.cuda.is_available():
        device = f"cuda:{info.local_rank % torch.cuda.device_count()}"
    return info, device


@contextlib.contextmanager
def lock_for_run(out_dir: Path, info: DistInfo) -> Iterator[None]:
    """Hold OUT's lock for the run. Under torchrun rank 0 holds it for its group (the ranks
    share OUT) and a refusal stops every rank."""
    if not info.enabled:
        with out_lock(out_dir):
            yield
        return
    with contextlib.ExitStack() as stack:
        refused: MedrefineError | None = None
        if info.is_main:
            try:
                stack.enter_context(out_lock(out_dir))
            except MedrefineError as err:
                refused = err
        if all_ranks_sum(int(refused is not None), info):
            raise refused or OutputError(
                f"-o {out_dir}: another medrefine run is writing into this folder; wait for "
                "it to end or choose another folder"
            )
        yield


def part_path(out_dir: Path, rank: int) -> Path:
    return out_dir / f"report.rank{rank}.json"


def gather_records(
    out_dir: Path, part: dict[str, Any], info: DistInfo
) -> list[dict[str, Any]] | None:
    """Write this rank's ``part`` of the report; after the barrier rank 0 returns every rank's
    records (problems first, then input order), the other ranks None."""
    import torch.distributed as dist

    write_json(part_path(out_dir, info.rank), part)
    dist.barrier()
    if not info.is_main:
        return None
    records = []
    for rank in range(info.world_size):
        records.extend(json.loads(part_path(out_dir, rank).read_text())["files"])
    records.sort(key=lambda r: ("rank" in r, r["input"]))
    return records


def remove_parts(out_dir: Path, info: DistInfo) -> None:
    """Remove the ranks' parts once the merged report is written."""
    for rank in range(info.world_size if info.enabled else 0):
        part_path(out_dir, rank).unlink(missing_ok=True)


def all_ranks_sum(value: int, info: DistInfo) -> int:
    if not info.enabled:
        return value
    from medrefine.training.distributed import all_reduce_sum

    return int(all_reduce_sum([float(value)], info)[0])


def stop_distributed(info: DistInfo) -> None:
    from medrefine.training.distributed import shutdown

    shutdown(info)
