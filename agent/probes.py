"""The measured cost table: one real evaluation per (unit, choice), made once and cached.

Each probe is the model with exactly one choice applied, measured by the same executor and
protocol as candidates. The table (`envs.cost.probe_cost_model`) gives the surrogate its prior:
what each choice costs in latency on *this* runtime and machine, and in accuracy. Probes are
not candidates — they do not count against the budget and never enter the front — and their
time is reported separately (``probe_seconds``). The table is cached per workload, runtime,
threads, batch size and CPU model, so later searches on the same setup start from it at once.
Each probe is kept as a `Score` (what the reward and the surrogate read); a table written
before that held a subset of each result's ``to_dict()``, and still loads.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from envs.cost import (
    CostModel,
    collective_probes,
    probe_cost_model,
    probe_plan,
    probe_strategy,
)
from envs.reward import Score
from runners.executor import Executor
from runners.job import Outcome
from search_spaces.space import DecisionSpace
from search_spaces.strategy import Strategy

PROBES_VERSION = 1


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def table_key(scope: dict[str, Any], space: DecisionSpace) -> str:
    """Cache key of a probe table: what was measured, where, and the probed choices."""
    data = {
        "version": PROBES_VERSION,
        "scope": scope,
        "cpu": _cpu_model(),
        "plan": [
            (space.steps[s].unit.name, a, str(space.steps[s].options[a][i]))
            for s, a, i in probe_plan(space)
        ],
        "collective": [s.key() for s in collective_probes(space)],
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def measure_probes(
    space: DecisionSpace,
    executor: Executor,
    cache_dir: Path | None,
    scope: dict[str, Any],
    progress: Callable[[int, int], None] | None = None,
) -> tuple[CostModel, list[tuple[Strategy, Score | None]], float]:
    """Measure (or load) every single-choice probe, plus the collective ones.

    Returns:
        The measured cost table, the probes as ``(strategy, score or None if it failed)`` pairs
        (training data for the surrogate), and the seconds spent measuring (0 when loaded from
        cache).
    """
    plan = probe_plan(space)
    strategies = [probe_strategy(space, p) for p in plan] + collective_probes(space)
    key = table_key(scope, space)
    stem = re.sub(r"[^\w.-]+", "_", str(scope["workload"]))
    cache_file = None if cache_dir is None else cache_dir / f"{stem}-{key}.json"
    results = None if cache_file is None else _load(cache_file, key, len(strategies))
    seconds = 0.0
    if results is None:
        start = time.perf_counter()
        results = _measure(strategies, executor, progress)
        seconds = time.perf_counter() - start
        if cache_file is not None:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_suffix(f".tmp{os.getpid()}")
            stored = [None if r is None else r.to_dict() for r in results]
            tmp.write_text(json.dumps({"key": key, "seconds": seconds, "results": stored}))
            tmp.replace(cache_file)
    table = probe_cost_model(space, dict(zip(plan, results[: len(plan)], strict=True)))
    return table, list(zip(strategies, results, strict=True)), seconds


def _load(cache_file: Path, key: str, count: int) -> list[Score | None] | None:
    """The stored table's scores, or None when it is missing, unreadable or for other probes."""
    if not cache_file.exists():
        return None
    try:
        stored = json.loads(cache_file.read_text())
        if stored.get("key") != key or len(stored.get("results", ())) != count:
            return None
        return [None if r is None else Score.from_dict(r) for r in stored["results"]]
    except (OSError, ValueError, TypeError, AttributeError):  # torn or foreign: measure again
        return None


def _measure(
    strategies: list[Strategy],
    executor: Executor,
    progress: Callable[[int, int], None] | None,
) -> list[Score | None]:
    results: list[Score | None] = [None] * len(strategies)
    index = {s.key(): i for i, s in enumerate(strategies)}
    for s in strategies:
        executor.submit(s)
    done = 0
    while executor.pending:
        for outcome in executor.poll(timeout=1.0):
            results[index[outcome.strategy.key()]] = _score(outcome)
            done += 1
            if progress:
                progress(done, len(strategies))
    return results


def _score(outcome: Outcome) -> Score | None:
    return None if not outcome.ok or outcome.result is None else Score.of(outcome.result)
