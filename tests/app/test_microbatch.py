"""The web server's model lane: concurrent network calls batched in one thread."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from medrefine.app.microbatch import ModelLane, batched_pipeline
from medrefine.pipeline import SegmentationPipeline
from medrefine.presets import sample_path


def hold(lane: ModelLane) -> threading.Event:
    """Keep the lane busy until the returned event is set, so that calls queue up."""
    entered, release = threading.Event(), threading.Event()

    def busy(x):
        entered.set()
        release.wait(10)
        return x

    threading.Thread(target=lane.call, args=(busy, torch.zeros(1)), daemon=True).start()
    entered.wait(10)
    return release


def wait_queued(lane: ModelLane, n: int) -> None:
    for _ in range(1000):
        if lane._queue.qsize() >= n:
            return
        threading.Event().wait(0.01)
    raise AssertionError(f"{n} calls never queued")


def test_calls_waiting_together_run_as_one_batch_and_each_caller_gets_its_slice():
    lane, sizes = ModelLane(max_batch=4), []

    def net(x, pair):
        sizes.append(x.shape[0])
        return [x * 2, pair[1][0] + x]

    inputs = [torch.full((1, 2), float(i)) for i in range(5)]
    release = hold(lane)
    with ThreadPoolExecutor(5) as pool:
        futures = [pool.submit(lane.call, net, x, (x, [x * 10])) for x in inputs]
        wait_queued(lane, 5)
        release.set()
        outs = [f.result(10) for f in futures]
    assert sorted(sizes) == [1, 4]  # four at most in a batch; the fifth runs next
    for x, (double, plus) in zip(inputs, outs, strict=True):
        torch.testing.assert_close(double, x * 2)
        torch.testing.assert_close(plus, x * 11)


def test_broadcast_arguments_of_batch_one_are_expanded_and_shapes_that_differ_run_apart():
    lane, seen = ModelLane(max_batch=8), []

    def net(x, cond):
        seen.append(tuple(x.shape))
        return x + cond.expand_as(x)

    calls = [
        (torch.zeros(2, 3), torch.ones(1, 3)),  # two samples, one condition
        (torch.zeros(1, 3), torch.full((1, 3), 2.0)),
        (torch.zeros(1, 5), torch.ones(1, 5)),  # another shape: a batch of its own
    ]
    release = hold(lane)
    with ThreadPoolExecutor(3) as pool:
        futures = []
        for c in calls:  # queued in this order
            futures.append(pool.submit(lane.call, net, *c, broadcast=True))
            wait_queued(lane, len(futures))
        release.set()
        outs = [f.result(10) for f in futures]
    assert seen == [(3, 3), (1, 5)]
    for (x, cond), out in zip(calls, outs, strict=True):
        torch.testing.assert_close(out, x + cond.expand_as(x))


def test_an_error_reaches_every_caller_of_the_batch_and_the_lane_goes_on():
    lane = ModelLane(max_batch=4)

    def broken(x):
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        lane.call(broken, torch.zeros(1))
    torch.testing.assert_close(lane.call(lambda x: x + 1, torch.zeros(1)), torch.ones(1))
    with pytest.raises(ValueError, match="at least 1"):
        ModelLane(max_batch=0)


def test_a_pipeline_in_the_lane_gives_every_concurrent_request_its_own_result(tiny_weights):
    """Four requests at once through one lane (two samples each: the condition broadcasts)
    get what the pipeline gives each alone."""
    images = [sample_path(name) for name in ("polyp", "skin", "lung", "polyp")]
    plain = SegmentationPipeline(tiny_weights["coarse"], tiny_weights["refiner"])
    expected = [plain.run(image) for image in images]
    lane = ModelLane(max_batch=4)
    batched = batched_pipeline(
        SegmentationPipeline(tiny_weights["coarse"], tiny_weights["refiner"]), lane
    )
    release = hold(lane)
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(batched.run, image) for image in images]
        wait_queued(lane, 4)  # the four coarse calls wait together: one batch
        release.set()
        results = [f.result(60) for f in futures]
    assert lane.calls > lane.batches
    for want, got in zip(expected, results, strict=True):
        np.testing.assert_allclose(got.coarse_probs, want.coarse_probs, atol=1e-5)
        np.testing.assert_allclose(got.refined_probs, want.refined_probs, atol=1e-5)
        np.testing.assert_allclose(got.uncertainty, want.uncertainty, atol=1e-5)
