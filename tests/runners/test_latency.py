"""The latency protocol, driven by a fake clock so every stop rule is exercised exactly."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from runners.latency import (
    LatencyConfig,
    LatencyStats,
    measure_compiled,
    measure_latency,
    measure_over_inputs,
)


class FakeClock:
    """A clock that only moves when a fake run advances it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def runs(self, durations_ms: Iterator[float]) -> Callable[[], None]:
        def run() -> None:
            self.now += next(durations_ms) / 1e3

        return run


def _config(**changes: object) -> LatencyConfig:
    base: dict[str, object] = {
        "warmup": 2,
        "round_runs": 10,
        "min_round_seconds": 0.0,
        "warmup_seconds": 0.0,
        "min_rounds": 3,
        "max_rounds": 8,
        "rel_tol": 0.02,
        "max_seconds": 1e6,
    }
    return LatencyConfig(**(base | changes))  # type: ignore[arg-type]


def test_measure_latency_stops_at_min_rounds_when_median_is_stable():
    clock = FakeClock()
    fn = clock.runs(iter([1.0] * 1000))

    stats = measure_latency(fn, _config(), clock=clock)

    assert stats.stable
    assert stats.rounds == 3
    assert stats.runs == 30
    assert stats.median_ms == pytest.approx(1.0)
    assert stats.spread == pytest.approx(0.0, abs=1e-9)


def test_measure_latency_runs_max_rounds_when_median_keeps_moving():
    clock = FakeClock()
    # Every run is 5 % slower than the last: the running median never settles within 2 %.
    durations = iter(1.05**i for i in range(1000))

    stats = measure_latency(clock.runs(durations), _config(), clock=clock)

    assert not stats.stable
    assert stats.rounds == 8
    assert stats.runs == 80


def test_measure_latency_excludes_warmup_and_reports_percentiles():
    clock = FakeClock()
    rng = np.random.default_rng(0)
    timed = rng.uniform(1.0, 2.0, size=20)
    warmup = [1000.0, 1000.0]  # would dominate the mean if they were counted
    durations = iter([*warmup, *timed, *([1.5] * 1000)])
    config = _config(round_runs=10, min_rounds=2, max_rounds=2)

    stats = measure_latency(clock.runs(durations), config, clock=clock)

    assert stats.runs == 20
    assert stats.median_ms == pytest.approx(np.median(timed))
    assert stats.p10_ms == pytest.approx(np.percentile(timed, 10))
    assert stats.p90_ms == pytest.approx(np.percentile(timed, 90))
    assert stats.mean_ms == pytest.approx(timed.mean())
    expected_spread = (np.percentile(timed, 90) - np.percentile(timed, 10)) / np.median(timed)
    assert stats.spread == pytest.approx(expected_spread)


def test_measure_latency_lengthens_rounds_of_fast_runs_to_min_round_seconds():
    clock = FakeClock()
    fn = clock.runs(iter([1.0] * 10_000))  # 1 ms per run, 10 runs would be 10 ms

    stats = measure_latency(fn, _config(min_round_seconds=0.05), clock=clock)

    assert stats.rounds == 3
    assert stats.runs == 3 * 50
    assert stats.stable


def test_measure_latency_stops_mid_round_when_max_seconds_is_hit():
    clock = FakeClock()
    fn = clock.runs(iter([1000.0] * 1000))  # 1 s per run

    stats = measure_latency(fn, _config(warmup=1, max_seconds=5.5), clock=clock)

    # 1 s of warm-up, then timed runs until 5.5 s have passed: 5 runs, first round cut short.
    assert stats.runs == 5
    assert stats.rounds == 1
    assert not stats.stable


def test_measure_latency_disables_gc_while_timing_and_restores_it():
    seen: list[bool] = []
    assert gc.isenabled()

    measure_latency(lambda: seen.append(gc.isenabled()), _config(max_rounds=3))

    assert seen and not any(seen)
    assert gc.isenabled()


def test_measure_latency_restores_gc_when_fn_raises():
    def boom() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        measure_latency(boom, _config())

    assert gc.isenabled()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"warmup": -1}, "warmup"),
        ({"round_runs": 0}, "round_runs"),
        ({"min_round_seconds": -0.1}, "min_round_seconds"),
        ({"min_rounds": 1}, "min_rounds"),
        ({"min_rounds": 5, "max_rounds": 4}, "max_rounds"),
        ({"rel_tol": 0.0}, "rel_tol"),
        ({"rel_tol": 1.5}, "rel_tol"),
        ({"max_spread": 0.0}, "max_spread"),
        ({"max_seconds": 0.0}, "max_seconds"),
        ({"max_seconds": float("inf")}, "max_seconds"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_latency_config_rejects_invalid_value(changes, message):
    with pytest.raises(ValueError, match=message):
        LatencyConfig(**changes)


def test_latency_stats_round_trips_through_dict():
    stats = LatencyStats.from_times([0.001, 0.002, 0.003], rounds=1, stable=False)

    assert LatencyStats.from_dict(stats.to_dict()) == stats
    assert stats.to_dict()["median_ms"] == pytest.approx(2.0)


def test_latency_stats_rejects_percentiles_out_of_order():
    with pytest.raises(ValueError, match="p10 <= median <= p90"):
        LatencyStats(
            median_ms=1.0,
            p90_ms=0.5,
            p10_ms=0.1,
            mean_ms=1.0,
            spread=0.1,
            runs=1,
            rounds=1,
            stable=True,
        )


class _RecordingCompiled:
    runtime = "fake"
    size_bytes = 0

    def __init__(self) -> None:
        self.info: dict[str, object] = {}
        self.inputs: list[np.ndarray] = []

    def run(self, inputs: np.ndarray) -> np.ndarray:
        self.inputs.append(inputs)
        return inputs


def test_measure_compiled_runs_one_contiguous_float32_batch_of_batch_size():
    compiled = _RecordingCompiled()
    example = torch.arange(6, dtype=torch.float64).reshape(1, 2, 3)
    config = _config(warmup=1, round_runs=2, min_rounds=2, max_rounds=2, batch_size=4)

    stats = measure_compiled(compiled, example, config)

    assert stats.runs == 4
    assert len(compiled.inputs) == 5  # warm-up included
    assert all(x is compiled.inputs[0] for x in compiled.inputs)  # built once
    batch = compiled.inputs[0]
    assert batch.shape == (4, 2, 3)
    assert batch.dtype == np.float32
    assert batch.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(batch[3], example[0].numpy())


def test_warmup_lasts_at_least_warmup_seconds():
    clock = FakeClock()
    calls = []
    timed = clock.runs(iter([1.0] * 1000))  # every run takes 1 ms of fake time

    def run() -> None:
        calls.append(clock())
        timed()

    stats = measure_latency(
        run,
        _config(warmup=1, warmup_seconds=0.05, round_runs=1, min_rounds=2, max_rounds=2),
        clock=clock,
    )

    assert stats.runs == 2
    assert len(calls) - stats.runs == 50  # warm-up ran until 50 ms had passed, not once


def test_measure_over_inputs_summarises_each_input_separately():
    """An input-dependent model: input 0 is instant, input 1 takes 5 ms. The per-input summary
    sees both; the plain median of the mixed runs would hide one of them."""

    @dataclass
    class SlowOnOnes:
        runtime: str = "fake"
        size_bytes: int = 0

        def run(self, inputs: np.ndarray) -> np.ndarray:
            if inputs[0, 0] > 0.5:
                time.sleep(0.005)
            return inputs

    config = LatencyConfig(
        warmup=1, warmup_seconds=0, round_runs=6, min_round_seconds=0, min_rounds=2, max_rounds=3
    )
    stats = measure_over_inputs(SlowOnOnes(), torch.tensor([[0.0], [1.0]]), config)

    assert stats.inputs == 2
    assert stats.input_p90_ms is not None and stats.input_p90_ms > 4.0
    assert stats.input_mean_ms is not None and 2.0 < stats.input_mean_ms < 4.5
    assert stats.expected_ms == stats.input_mean_ms
    assert stats.runs % 2 == 0  # rotated: each input timed equally often


def test_a_settled_median_over_scattered_runs_is_not_stable():
    """Issue 18 (B.8): a spread of 5.9 was called ``latency_stable``. Runs alternating 1 ms and
    10 ms give a median that never moves, and a spread of 9: not stable."""
    clock = FakeClock()
    durations = iter([1.0, 1.0, 10.0] * 1000)
    stats = measure_latency(clock.runs(durations), _config(), clock=clock)
    assert stats.spread > 5
    assert not stats.stable
    calm = measure_latency(clock.runs(iter([1.0] * 1000)), _config(max_spread=0.1), clock=clock)
    assert calm.stable
