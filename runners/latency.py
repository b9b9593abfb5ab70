"""The latency measurement protocol: warm up, then timed rounds until the median settles.

Every latency layerpilot reports comes from :func:`measure_latency`, so that two numbers are
comparable only if they were taken the same way. One timed *run* is one call of the function
(one batch); runs are grouped in *rounds* (``round_runs`` runs, and at least
``min_round_seconds``), and after each round the median of **all** runs so far is compared with
the median after the previous round. The measurement stops when that
median moved by at most ``rel_tol`` (stable), or at ``max_rounds`` / ``max_seconds`` (not
stable; the record says so). The garbage collector is run once before and kept off while
timing, so a collection never lands inside a timed run.

Example:
    >>> stats = measure_latency(lambda: sum(range(1000)), LatencyConfig(max_seconds=1.0))
    >>> stats.median_ms > 0
    True
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from envs.workloads.inputs import Inputs, batch_size, detach, repeat, take

if TYPE_CHECKING:
    from runners.base import Compiled


@dataclass(frozen=True)
class LatencyConfig:
    """How a latency is measured (the same protocol for every runtime)."""

    warmup: int = 20
    """Untimed runs before timing (allocations, lazy kernel selection, caches)."""
    warmup_seconds: float = 0.2
    """Warm-up also lasts at least this long, so timing starts after the CPU has settled from
    whatever ran before (a freshly prepared model's torch work left the first baseline of the
    transforms benchmark 6 % slow; 0 disables it)."""
    round_runs: int = 50
    """Timed runs per round (at least); stability is checked after each round."""
    min_round_seconds: float = 0.2
    """A round also lasts at least this long: sub-millisecond models get more runs per round,
    so each round spans many scheduler time slices (0 disables it). With ``min_rounds`` this
    times every model for at least a second: shorter windows let one burst of background
    activity move a 1 ms median by 5 % (seen in the transforms benchmark)."""
    min_rounds: int = 5
    """Rounds always run (unless ``max_seconds`` is hit first); at least 2, because stability
    compares consecutive rounds."""
    max_rounds: int = 20
    """Stop after this many rounds even if the median is still moving (``stable=False``)."""
    rel_tol: float = 0.02
    """Stable when the median of all runs so far moved by at most this fraction between two
    consecutive rounds."""
    max_spread: float = 0.5
    """...and the runs' spread, ``(p90 − p10) / median``, is at most this: a median can settle
    while the runs scatter over a band several times its size (a spread of 5.9 was once called
    stable under a load spike). Quiet timings here spread 0.02–0.3."""
    max_seconds: float = 30.0
    """Wall-clock cap for the whole measurement, warm-up included; checked after every run, so a
    slow model stops mid-round (``stable=False``)."""
    batch_size: int = 1
    """Batch size of each timed run (:func:`measure_compiled` repeats the example input)."""
    inputs: int = 64
    """Distinct eval inputs the runs rotate over when a model's cost depends on its input
    (:func:`measure_over_inputs`); unused for static models."""

    def __post_init__(self) -> None:
        errors = []
        if self.inputs < 1:
            errors.append(f"inputs must be >= 1, got {self.inputs}")
        if self.warmup < 0:
            errors.append(f"warmup must be >= 0, got {self.warmup}")
        if not 0.0 <= self.warmup_seconds < math.inf:
            errors.append(f"warmup_seconds must be >= 0, got {self.warmup_seconds}")
        if self.round_runs < 1:
            errors.append(f"round_runs must be >= 1, got {self.round_runs}")
        if not 0.0 <= self.min_round_seconds < math.inf:
            errors.append(f"min_round_seconds must be >= 0, got {self.min_round_seconds}")
        if self.min_rounds < 2:
            errors.append(
                f"min_rounds must be >= 2 (stability compares two rounds), got {self.min_rounds}"
            )
        if self.max_rounds < self.min_rounds:
            errors.append(
                f"max_rounds ({self.max_rounds}) must be >= min_rounds ({self.min_rounds})"
            )
        if not 0.0 < self.rel_tol < 1.0:
            errors.append(f"rel_tol must be in (0, 1), got {self.rel_tol}")
        if not 0.0 < self.max_spread < math.inf:
            errors.append(f"max_spread must be a positive number, got {self.max_spread}")
        if not (self.max_seconds > 0 and math.isfinite(self.max_seconds)):
            errors.append(f"max_seconds must be a positive number, got {self.max_seconds}")
        if self.batch_size < 1:
            errors.append(f"batch_size must be >= 1, got {self.batch_size}")
        if errors:
            raise ValueError("LatencyConfig: " + "; ".join(errors))


@dataclass(frozen=True)
class LatencyStats:
    """What one latency measurement found (per run, i.e. per batch of ``batch_size``)."""

    median_ms: float
    """Median over all timed runs: the number to compare."""
    p90_ms: float
    """90th percentile of the timed runs."""
    p10_ms: float
    """10th percentile of the timed runs."""
    mean_ms: float
    """Mean of the timed runs (pulled up by outliers; prefer the median)."""
    spread: float
    """``(p90 - p10) / median``: how noisy the runs were (0.05 = a 5 % band)."""
    runs: int
    """Timed runs (warm-up excluded)."""
    rounds: int
    """Rounds started (a round cut short by ``max_seconds`` counts)."""
    stable: bool
    """True when the median settled within ``rel_tol`` and the spread is within
    ``max_spread``; False when a cap stopped it first or the runs scattered."""
    inputs: int = 0
    """Distinct inputs the runs rotated over (0: one example repeated). Set for models whose
    cost depends on the input (dynamic skip)."""
    input_mean_ms: float | None = None
    """Mean over the inputs of each input's median: the expected cost of one real input."""
    input_median_ms: float | None = None
    """Median over the inputs of each input's median."""
    input_p90_ms: float | None = None
    """90th percentile over the inputs of each input's median."""

    @classmethod
    def not_timed(cls) -> LatencyStats:
        """The record of a measurement that was not taken (``EvalConfig.time_latency`` off:
        speed then comes from FLOPs): no runs, every figure NaN."""
        nan = math.nan
        return cls(nan, nan, nan, nan, nan, runs=0, rounds=0, stable=False)

    @property
    def timed(self) -> bool:
        """False for `not_timed` records."""
        return self.runs > 0

    @property
    def expected_ms(self) -> float:
        """The figure speedups are computed from: ``input_mean_ms`` when the runs rotated over
        real inputs (a skip-heavy minority must not hide behind a median), else ``median_ms``."""
        return self.input_mean_ms if self.input_mean_ms is not None else self.median_ms

    def __post_init__(self) -> None:
        if self.runs == 0 and self.rounds == 0 and math.isnan(self.median_ms):
            return  # not_timed()
        if self.runs < 1 or self.rounds < 1:
            raise ValueError(
                f"LatencyStats needs runs and rounds >= 1, got {self.runs}/{self.rounds}"
            )
        if not self.p10_ms <= self.median_ms <= self.p90_ms:
            raise ValueError(
                f"LatencyStats: expected p10 <= median <= p90, got "
                f"{self.p10_ms} / {self.median_ms} / {self.p90_ms}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (``from_dict`` reads them back)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyStats:
        """Inverse of :meth:`to_dict` (for cached records)."""
        return cls(**data)

    @classmethod
    def from_times(
        cls, times_s: list[float] | np.ndarray, rounds: int, stable: bool
    ) -> LatencyStats:
        """Summarise per-run durations given in seconds."""
        ms = np.asarray(times_s, dtype=np.float64) * 1e3
        if ms.size == 0:
            raise ValueError("LatencyStats.from_times needs at least one timed run")
        p10, median, p90 = (float(v) for v in np.percentile(ms, [10, 50, 90]))
        return cls(
            median_ms=median,
            p90_ms=p90,
            p10_ms=p10,
            mean_ms=float(ms.mean()),
            spread=(p90 - p10) / median if median > 0 else 0.0,
            runs=int(ms.size),
            rounds=rounds,
            stable=stable,
        )


def measure_latency(
    fn: Callable[[], object],
    config: LatencyConfig | None = None,
    *,
    clock: Callable[[], float] = time.perf_counter,
    record: list[float] | None = None,
) -> LatencyStats:
    """Time ``fn`` with the protocol in ``config`` (see the module docstring).

    Args:
        fn: One run (one batch). Its result is discarded; it must block until the work is done
            (synchronise a GPU inside it).
        config: The protocol; defaults to ``LatencyConfig()``.
        clock: Seconds as a float; injectable so tests can drive the protocol deterministically.
        record: If given, each timed run's duration (seconds, in order) is appended to it.

    Returns:
        The statistics of the timed runs, with ``stable`` telling whether the median settled.
    """
    config = config or LatencyConfig()
    times: list[float] = record if record is not None else []
    rounds = 0
    stable = False
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = clock()
        warm = 0
        while warm < config.warmup or clock() - start < config.warmup_seconds:
            fn()
            warm += 1
            if clock() - start >= config.max_seconds:
                break
        previous_median: float | None = None
        out_of_time = False
        while rounds < config.max_rounds and not out_of_time:
            rounds += 1
            round_start = clock()
            round_runs = 0
            complete = False
            while not complete:
                t0 = clock()
                fn()
                t1 = clock()
                times.append(t1 - t0)
                round_runs += 1
                complete = (
                    round_runs >= config.round_runs and t1 - round_start >= config.min_round_seconds
                )
                if t1 - start >= config.max_seconds:
                    out_of_time = True
                    break
            if not complete:
                break  # cut short by max_seconds: a partial round says nothing about stability
            median = float(np.median(times))
            if (
                previous_median is not None
                and rounds >= config.min_rounds
                and abs(median - previous_median) <= config.rel_tol * previous_median
            ):
                stable = True
                break
            previous_median = median
    finally:
        if gc_was_enabled:
            gc.enable()
    stats = LatencyStats.from_times(times, rounds, stable)
    if stats.spread > config.max_spread:
        stats = replace(stats, stable=False)
    return stats


def measure_compiled(
    compiled: Compiled, example_input: Inputs, config: LatencyConfig | None = None
) -> LatencyStats:
    """Time ``compiled.run`` on a batch of ``config.batch_size`` copies of ``example_input``.

    The batch is built once, as contiguous arrays in the inputs' own dtypes, so only the
    runtime is timed.

    Args:
        compiled: A compiled candidate (any runtime).
        example_input: A batch-1 input (tensor, tuple or dict of tensors); its first sample is
            repeated along the batch axis.
        config: The protocol; defaults to ``LatencyConfig()``.
    """
    from runners.base import runtime_inputs

    config = config or LatencyConfig()
    batch = runtime_inputs(repeat(detach(example_input), config.batch_size))
    return measure_latency(lambda: compiled.run(batch), config)


def measure_over_inputs(
    compiled: Compiled, inputs: Inputs, config: LatencyConfig | None = None
) -> LatencyStats:
    """Time ``compiled.run`` rotating over real inputs, for models whose cost depends on them.

    Run ``i`` uses input ``i mod N`` (each repeated ``config.batch_size`` times), so every input
    is timed about equally often under the same protocol; the result adds each input's median
    summarised over the inputs (mean, median, p90). Speedups use the mean (``expected_ms``).
    """
    from runners.base import runtime_inputs

    config = config or LatencyConfig()
    samples = detach(inputs)
    n = batch_size(samples)
    if n < 1:
        raise ValueError("measure_over_inputs needs at least one input")
    batches = [
        runtime_inputs(repeat(take(samples, slice(i, i + 1)), config.batch_size)) for i in range(n)
    ]
    order: list[int] = []

    def run() -> None:
        i = len(order) % len(batches)
        order.append(i)
        compiled.run(batches[i])

    times: list[float] = []
    stats = measure_latency(run, config, record=times)
    warm = len(order) - len(times)
    per_input: dict[int, list[float]] = {}
    for index, t in zip(order[warm:], times, strict=True):
        per_input.setdefault(index, []).append(t * 1e3)
    medians = np.array([float(np.median(v)) for v in per_input.values()])
    return replace(
        stats,
        inputs=len(per_input),
        input_mean_ms=float(medians.mean()),
        input_median_ms=float(np.median(medians)),
        input_p90_ms=float(np.percentile(medians, 90)),
    )


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (Linux x86), else an empty set."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def cpu_model() -> str | None:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), else ``None``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return None
