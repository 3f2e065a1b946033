"""A training run folder: config.json, metrics.jsonl, training_curve.png, weights, resume state."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import torch

from medrefine.io.base import atomic_output


class RunLog:
    def __init__(self, run_dir: str | Path, enabled: bool = True):
        self.dir = Path(run_dir)
        self.enabled = enabled
        if enabled:
            self.dir.mkdir(parents=True, exist_ok=True)
        self.history: list[dict[str, Any]] = []
        path = self.dir / "metrics.jsonl"
        if path.is_file():
            self.history = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]

    def write_config(self, config: dict[str, Any]) -> None:
        if self.enabled:
            atomic_write_text(self.dir / "config.json", json.dumps(config, indent=2, default=str))

    def log(self, row: dict[str, Any], curve_keys: tuple[str, ...]) -> None:
        self.history.append(row)
        if not self.enabled:
            return
        with open(self.dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        try:
            from medrefine.visualize import training_curve_png

            training_curve_png(self.history, self.dir / "training_curve.png", keys=curve_keys)
        except (ImportError, ValueError) as err:  # a plot must never stop training
            print(f"warning: no training curve ({err})", file=sys.stderr)

    def truncate(self, epoch: int) -> None:
        """Forget rows after ``epoch`` (used when resuming from an earlier state)."""
        self.history = [r for r in self.history if r.get("epoch", 0) <= epoch]
        if self.enabled:
            atomic_write_text(self.dir / "metrics.jsonl",
                              "".join(json.dumps(r) + "\n" for r in self.history))


def save_resume_state(path: Path, state: dict[str, Any]) -> None:
    """Optimizer/scheduler state for --resume (plain tensors and numbers; loads with
    ``weights_only=True``)."""
    with atomic_output(path) as tmp:
        torch.save(state, tmp)


def load_resume_state(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` atomically, with the umask's mode as every output (mkstemp: 0600)."""
    with atomic_output(path) as tmp:
        tmp.write_text(text)


def warmup_cosine(step: int, total: int, warmup: int, floor: float = 0.01) -> float:
    """LR multiplier: linear warm-up then cosine decay to ``floor``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
