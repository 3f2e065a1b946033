"""What the coarse and the refiner training loops share: data loaders (DDP-aware), AdamW with
warm-up + cosine, resume, the end-of-epoch bookkeeping (weights, resume state, metrics log)
and the wall-time limit. The loops themselves stay explicit in coarse.py and refiner.py."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler

from medrefine.checkpoint import save_weights, unwrap
from medrefine.errors import ConfigError
from medrefine.training import distributed as D
from medrefine.training.runlog import RunLog, load_resume_state, save_resume_state, warmup_cosine

logger = logging.getLogger(__name__)


def switch_overrides(args) -> dict[str, bool]:
    """The config keys ``medrefine train``'s switches set where given: ``--resume``,
    ``--no-amp``, ``--no-pretrained`` (the coarse and the refiner stage alike)."""
    switches = (("resume", "resume", True), ("no_amp", "amp", False),
                ("no_pretrained", "pretrained", False))
    return {key: value for flag, key, value in switches if getattr(args, flag, False)}


def make_loader(dataset: Dataset, batch_size: int, seed: int, workers: int,
                dist_info: D.DistInfo) -> tuple[DataLoader, DistributedSampler | RandomSampler]:
    sampler = (DistributedSampler(dataset, seed=seed) if dist_info.enabled
               else RandomSampler(dataset))
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True,
                        num_workers=workers, persistent_workers=workers > 0)
    if len(loader) == 0:
        raise ConfigError(f"batch_size {batch_size} is larger than the training set "
                          f"({len(dataset)} cases per process)")
    return loader, sampler


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, epochs: int,
                   steps_per_epoch: int, warmup_epochs: float):
    """AdamW with a linear warm-up then cosine decay, stepped once per batch."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    total = epochs * steps_per_epoch
    warmup = max(1, round(warmup_epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, total, warmup))
    return optimizer, scheduler


@dataclass
class Progress:
    start_epoch: int = 1
    best: float = -1.0
    minutes_before: float = 0.0  # wall time of earlier runs of a resumed training


def maybe_resume(resume: bool, path: Path, model, optimizer, scheduler, run: RunLog) -> Progress:
    if not (resume and path.is_file()):
        return Progress()
    state = load_resume_state(path)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    run.truncate(state["epoch"])
    minutes = float(run.history[-1].get("minutes", 0.0)) if run.history else 0.0
    logger.info("resumed from %s at epoch %d", path, state["epoch"] + 1)
    return Progress(state["epoch"] + 1, state["best"], minutes)


def end_of_epoch(run: RunLog, dist_info: D.DistInfo, model, optimizer, scheduler,
                 resume_path: Path, epoch: int, score: float, progress: Progress,
                 info: dict[str, Any], row: dict[str, Any], curve_keys: tuple[str, ...],
                 keep_epochs: tuple[int, ...] = ()) -> None:
    """On the main rank: last/best weights, resume state and the metrics row; the weights of
    the epochs in ``keep_epochs`` are kept too (``epoch_K.safetensors``: early checkpoints are
    the weaker segmenters whose masks the refiner learns to fix)."""
    improved = score > progress.best
    progress.best = max(progress.best, score)
    if not dist_info.is_main:
        return
    save_weights(run.dir / "last.safetensors", model, info)
    if improved:
        save_weights(run.dir / "best.safetensors", model, info)
    if epoch in keep_epochs:
        save_weights(run.dir / f"epoch_{epoch}.safetensors", model, info)
    save_resume_state(resume_path, {
        "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(), "epoch": epoch, "best": progress.best})
    run.log({**row, "best": progress.best}, curve_keys)


def time_is_up(max_minutes: float, minutes: float, dist_info: D.DistInfo) -> bool:
    """True on every rank at once when the wall-time limit has passed on any of them."""
    over = float(bool(max_minutes) and minutes > max_minutes)
    if D.all_reduce_sum([over], dist_info)[0] > 0:
        logger.warning("stopping after %.1f minutes (max_minutes)", minutes)
        return True
    return False


def use_bf16(amp: bool, device: torch.device) -> bool:
    """bf16 autocast: about 2x faster training steps on CPUs with AMX/AVX512-BF16."""
    return amp and (device.type == "cuda" or _cpu_has_bf16())


def autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
