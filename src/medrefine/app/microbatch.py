"""One lane for the models of a web server: the network calls of concurrent requests run in one
thread, and calls waiting at the same time run as one batch.

Each request keeps running its own pipeline (preprocessing, post-processing, pictures) in
Gradio's worker threads; only the model calls (the coarse network, the refiner's condition
encoder and its denoising steps) go through the lane. The lane's thread takes the oldest call
and every call already waiting behind it (up to ``max_batch``), groups those of the same network
and the same tensor shapes, concatenates each group along the batch dimension, runs it once and
hands every caller its slice. A call that finds the lane idle runs at once, alone, so a single
request waits for nothing. Calls are served in the order they arrived (a group goes when its
oldest call is the oldest waiting), so the queue's fairness holds here too.

On a CPU this is also the cheapest way to share the cores: one network at a time uses them all
(``torch.set_num_threads(cores)`` in the lane), instead of several requests each running on a
share of them and competing for memory bandwidth. The figures are in docs/web.md ("Under
load"): ``scripts/app_load.py`` with ``--max-batch 1`` (no lane) and the default side by
side.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["ModelLane", "batched_pipeline"]


@dataclass
class _Call:
    fn: Callable[..., Any]
    args: tuple
    broadcast: bool
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


def _leaves(tree: Any) -> list[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, (list, tuple)):
        return [leaf for item in tree for leaf in _leaves(item)]
    raise TypeError(f"model lane: arguments must be tensors or lists of them, got {type(tree)}")


def _structure(tree: Any) -> Any:
    if isinstance(tree, torch.Tensor):
        return (tuple(tree.shape[1:]), tree.dtype)
    return (type(tree).__name__, tuple(_structure(item) for item in tree))


def _map(tree: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    if isinstance(tree, torch.Tensor):
        return fn(tree)
    return type(tree)(_map(item, fn) for item in tree)


def _concat(trees: list[Any]) -> Any:
    first = trees[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(trees, 0)
    return type(first)(_concat([t[i] for t in trees]) for i in range(len(first)))


def _split(tree: Any, sizes: list[int]) -> list[Any]:
    if isinstance(tree, torch.Tensor):
        return list(torch.split(tree, sizes, 0))
    parts = [_split(item, sizes) for item in tree]
    return [type(tree)(p[i] for p in parts) for i in range(len(sizes))]


class ModelLane:
    """Runs network calls from many threads in one thread, batching those that wait together.

    ``max_batch``: the most calls in one batch (1: every call alone, still in the lane's
    thread). ``threads``: intra-op threads for the lane (default: every core).
    """

    def __init__(self, max_batch: int = 4, threads: int | None = None) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.max_batch = int(max_batch)
        self.threads = int(threads or os.cpu_count() or 1)
        self.batches = 0  # batches run, and the calls they held (for tests and figures)
        self.calls = 0
        self._queue: queue.Queue[_Call] = queue.Queue()
        self._thread = threading.Thread(target=self._serve, name="medrefine-model-lane",
                                        daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ callers
    def call(self, fn: Callable[..., Any], *args: Any, broadcast: bool = False) -> Any:
        """``fn(*args)`` run in the lane, maybe batched with other callers' calls of ``fn``.

        ``args``: tensors (batch first) or lists/tuples of them. ``broadcast``: ``fn``
        broadcasts arguments of batch 1 against the others (the denoiser's condition for
        several samples), so they may be expanded before batching."""
        if threading.current_thread() is self._thread:  # a model calling a model
            return fn(*args)
        job = _Call(fn, args, broadcast)
        self._queue.put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    def wrap(self, fn: Callable[..., Any], broadcast: bool = False) -> Callable[..., Any]:
        def run_in_lane(*args: Any) -> Any:
            return self.call(fn, *args, broadcast=broadcast)

        return run_in_lane

    # ------------------------------------------------------------ the lane
    def _serve(self) -> None:
        torch.set_num_threads(self.threads)
        while True:
            waiting = [self._queue.get()]
            while len(waiting) < self.max_batch:
                try:
                    waiting.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            for group in self._groups(waiting):
                self._run(group)

    def _groups(self, calls: list[_Call]) -> list[list[_Call]]:
        """Calls of the same function and tensor shapes, in the order their first arrived."""
        groups: dict[Any, list[_Call]] = {}
        for job in calls:
            try:
                key = (id(job.fn), _structure(self._prepared(job)))
            except (TypeError, ValueError):
                key = (id(job), None)  # not batchable: runs alone
            groups.setdefault(key, []).append(job)
        return list(groups.values())

    @staticmethod
    def _prepared(job: _Call) -> tuple:
        """The call's arguments with one batch size throughout (expanded where it broadcasts)."""
        sizes = {t.shape[0] for t in _leaves(job.args)}
        if len(sizes) == 1:
            return job.args
        n = max(sizes)
        if not job.broadcast or sizes != {1, n}:
            raise ValueError("mixed batch sizes")
        return _map(job.args, lambda t: t.expand(n, *t.shape[1:]) if t.shape[0] == 1 else t)

    def _run(self, group: list[_Call]) -> None:
        self.batches += 1
        self.calls += len(group)
        try:
            with torch.inference_mode():
                if len(group) == 1:
                    group[0].result = group[0].fn(*group[0].args)
                else:
                    args = [self._prepared(job) for job in group]
                    sizes = [_leaves(a)[0].shape[0] for a in args]
                    out = group[0].fn(*_concat(args))
                    for job, part in zip(group, _split(out, sizes), strict=True):
                        job.result = part
        except BaseException as err:  # every caller of the batch gets the error
            for job in group:
                job.error = err
        finally:
            for job in group:
                job.done.set()


class _LaneModule:
    """A network seen through the lane: calls and ``encode_condition`` go there, every other
    attribute (``cfg``, ``eval``...) is the network's own."""

    def __init__(self, module: torch.nn.Module, lane: ModelLane, broadcast: bool) -> None:
        self._module = module
        self._forward = lane.wrap(module, broadcast=broadcast)
        if hasattr(module, "encode_condition"):
            self.encode_condition = lane.wrap(module.encode_condition)

    def __call__(self, *args: Any) -> Any:
        return self._forward(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


def batched_pipeline(pipe: Any, lane: ModelLane) -> Any:
    """``pipe`` (a ``SegmentationPipeline`` on the torch backend) with its coarse model and its
    refiners' denoisers running in ``lane``; returns ``pipe``. Other backends stay as they are."""
    if pipe.backend.get("name") != "torch":
        return pipe
    models = [getattr(pipe, "coarse", None), getattr(pipe, "refiner", None)]
    fixer = pipe.fixer()
    if fixer is not pipe:
        models.append(fixer.refiner)
    for owner in itertools.filterfalse(lambda m: m is None, models):
        if isinstance(owner.model, torch.nn.Module):
            owner.model = _LaneModule(owner.model, lane, broadcast=hasattr(owner, "diffusion"))
    return pipe
