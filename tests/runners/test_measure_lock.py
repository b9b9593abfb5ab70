"""The host-wide measurement lock: timed sections of different processes never overlap, and a
worker with measurement cores times on them only."""

from __future__ import annotations

import math
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import pytest

from runners.evaluate import EvalConfig, evaluate, measure
from runners.job import EvalSpec
from runners.measure_lock import exclusive_measurement, set_measure_cpus
from search_spaces import Strategy

from models import QUICK_LATENCY, self_labelled_subject


def _hold(lock: str, seconds: float, queue: Any, barrier: Any) -> None:
    os.environ["LAYERPILOT_MEASURE_LOCK"] = lock
    barrier.wait(timeout=60)  # both ask for the lock at the same moment
    with exclusive_measurement() as waited:
        start = time.monotonic()
        time.sleep(seconds)
        queue.put((start, time.monotonic(), waited))


def test_timed_sections_of_two_processes_take_turns(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    lock = str(tmp_path / "measure.lock")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_hold, args=(lock, 0.6, queue, barrier)) for _ in range(2)]
    for p in procs:
        p.start()
    spans = sorted(queue.get(timeout=60) for _ in procs)
    for p in procs:
        p.join()

    (_, e1, w1), (s2, _, w2) = spans
    assert e1 <= s2  # no overlap
    assert min(w1, w2) < 0.3 and max(w1, w2) > 0.3  # the second one waited for the first


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs sched_setaffinity")
def test_a_worker_times_on_its_measurement_cores_and_goes_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAYERPILOT_MEASURE_LOCK", str(tmp_path / "measure.lock"))
    before = os.sched_getaffinity(0)
    one = {min(before)}
    set_measure_cpus(sorted(one))
    try:
        with exclusive_measurement():
            during = os.sched_getaffinity(0)
    finally:
        set_measure_cpus(None)
    assert during == one
    assert os.sched_getaffinity(0) == before


def test_latency_free_mode_times_nothing_and_uses_the_flop_speedup() -> None:
    subject = self_labelled_subject("resnet", samples=96, train=64)
    config = EvalConfig(latency=QUICK_LATENCY, time_latency=False)
    strategy = Strategy.from_dict({"*": {"prune": 0.5}})

    result = evaluate(subject, strategy, config)
    data = result.to_dict()

    assert result.latency_runs == 0 and not result.latency_stable  # LatencyStats.not_timed()
    assert math.isnan(data["latency_ms"])
    assert data["speedup"] == data["ideal_speedup"] > 1.5
    assert data["speedup_source"] == "flops"
    timed = measure(subject, strategy, EvalConfig(latency=QUICK_LATENCY))
    assert timed.latency.timed and timed.info["timing_s"] > 0
    assert timed.accuracy == result.accuracy  # same build, same accuracy


def test_cache_scope_separates_timed_from_latency_free() -> None:
    timed = EvalSpec(workload="digits-resnet").cache_scope()
    free = EvalSpec(workload="digits-resnet", eval=EvalConfig(time_latency=False)).cache_scope()
    assert timed != free and free["latency"] == "not timed"
    assert isinstance(timed["latency"], dict)  # unchanged for timed searches: old caches valid
