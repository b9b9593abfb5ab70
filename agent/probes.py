"""The measured cost table: one real evaluation per (unit, choice), made once and cached.

Each probe is the model with exactly one choice applied, measured by the same executor and
protocol as candidates. The table (`envs.cost.probe_cost_model`) gives the surrogate its prior:
what each choice costs in latency on *this* runtime and machine, and in accuracy. Probes are
not candidates — they do not count against the budget and never enter the front — and their
time is reported separately (``probe_seconds``). The table is cached per workload, runtime,
threads, batch size and CPU model, so later searches on the same setup start from it at once.
Each probe is kept as a `Score` (what the reward and the surrogate read); a table written
before that held a subset of each result's ``to_dict()``, and still loads.

A search with a time budget gives the table at most `PROBE_SHARE` of it: probes are measured
most informative first (the whole-model collective ones, then the units with the largest FLOP
share), and what is left unmeasured keeps its FLOPs estimate. The partial table is cached with
the probes it still lacks, and the next search on the same setup measures those first.

Identical layers share their probes (`probe_twins`): the same choice on a unit of the same kind,
type, shapes and coupling is measured once and its score stands for every twin. A 12-layer
encoder's table costs what one layer's does; the twins' accuracy is the representative's (the
first in execution order), an approximation the search's own candidates then correct.
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

PROBE_SHARE = 0.15
"""Share of a search's time budget a cold probe table may take (on digits-resnet on 2 cores
the whole table costs ~200-450 s: a third of a 20-minute search, before its first
candidate)."""


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
    budget_s: float | None = None,
) -> tuple[CostModel, list[tuple[Strategy, Score | None]], float]:
    """Measure (or load) every single-choice probe, plus the collective ones.

    Args:
        budget_s: Seconds the measuring may take (None: no limit). Probes go most informative
            first (`probe_order`); once the budget is spent no more are submitted, those in
            flight finish, and the rest keep the FLOPs estimate.

    Returns:
        The measured cost table, the measured probes as ``(strategy, score or None if it
        failed)`` pairs (training data for the surrogate), and the seconds spent measuring
        (0 when everything came from the cache).
    """
    plan = probe_plan(space)
    twins = probe_twins(space, plan)
    strategies = [probe_strategy(space, p) for p in plan] + collective_probes(space)
    key = table_key(scope, space)
    stem = re.sub(r"[^\w.-]+", "_", str(scope["workload"]))
    cache_file = None if cache_dir is None else cache_dir / f"{stem}-{key}.json"
    results = None if cache_file is None else _load(cache_file, key, len(strategies))
    results = results if results is not None else {}
    order = probe_order(space, plan, len(strategies))
    todo = [i for i in order if i not in results and twins.get(i, i) == i]
    seconds = 0.0
    if todo:
        start = time.perf_counter()
        deadline = None if budget_s is None else start + budget_s
        results.update(_measure(strategies, todo, executor, progress, deadline))
        seconds = time.perf_counter() - start
        if cache_file is not None:
            stored = [results.get(i, MISSING) for i in range(len(strategies))]  # twins: MISSING
            _store(cache_file, key, seconds, stored)
    measured = {plan[i]: results[twins[i]] for i in range(len(plan)) if twins[i] in results}
    table = probe_cost_model(space, measured)
    probes = [(strategies[i], results[i]) for i in range(len(strategies)) if i in results]
    return table, probes, seconds


def probe_twins(space: DecisionSpace, plan: list[tuple[int, str, int]]) -> dict[int, int]:
    """For each single-choice probe, the index of the probe measured in its place: the first in
    ``plan`` with the same choice on an identical unit (kind, module type, widths, kernel,
    stride, groups, heads, input and output shapes, coupled group size); itself if none is."""
    first: dict[tuple[Any, ...], int] = {}
    twins: dict[int, int] = {}
    for i, (step, action, choice) in enumerate(plan):
        u = space.steps[step].unit
        signature = (
            action, str(space.steps[step].options[action][choice]), u.kind, u.module_type,
            u.in_channels, u.out_channels, u.kernel, u.stride, u.groups, u.heads,
            u.input_shape, u.output_shape, u.output_items, len(u.prune_group),
        )  # fmt: skip
        twins[i] = first.setdefault(signature, i)
    return twins


def probe_order(space: DecisionSpace, plan: list[tuple[int, str, int]], total: int) -> list[int]:
    """Indices of the probes (``plan`` then the collective ones, up to ``total``) in the order
    they are measured: the collective ones first (what no single-unit probe shows), then
    single-choice probes by their unit's FLOP share, largest first (plan order breaks ties)."""
    collective = list(range(len(plan), total))
    share = [space.steps[step].unit.flops_share for step, _, _ in plan]
    return collective + sorted(range(len(plan)), key=lambda i: -share[i])


MISSING = "missing"
"""A probe not measured yet (the budget ran out), as stored in a partial table."""


def _store(cache_file: Path, key: str, seconds: float, results: list[Score | str | None]) -> None:
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_suffix(f".tmp{os.getpid()}")
    stored = [r if r is None or isinstance(r, str) else r.to_dict() for r in results]
    tmp.write_text(json.dumps({"key": key, "seconds": seconds, "results": stored}))
    tmp.replace(cache_file)


def _load(cache_file: Path, key: str, count: int) -> dict[int, Score | None] | None:
    """The stored table's scores by probe index (a partial table lacks the probes it did not
    measure), or None when it is missing, unreadable or for other probes."""
    if not cache_file.exists():
        return None
    try:
        stored = json.loads(cache_file.read_text())
        if stored.get("key") != key or len(stored.get("results", ())) != count:
            return None
        return {
            i: None if r is None else Score.from_dict(r)
            for i, r in enumerate(stored["results"])
            if r != MISSING
        }
    except (OSError, ValueError, TypeError, AttributeError):  # torn or foreign: measure again
        return None


def _measure(
    strategies: list[Strategy],
    todo: list[int],
    executor: Executor,
    progress: Callable[[int, int], None] | None,
    deadline: float | None,
) -> dict[int, Score | None]:
    """Measure ``strategies[i]`` for ``i`` in ``todo``, in that order, keeping ``slots + 1`` in
    flight, until ``deadline`` (``perf_counter`` seconds) stops new submissions."""
    results: dict[int, Score | None] = {}
    index = {strategies[i].key(): i for i in todo}
    queue = list(todo)
    window = executor.slots + 1
    while queue or executor.pending:
        while queue and executor.pending < window:
            if deadline is not None and time.perf_counter() >= deadline:
                queue.clear()
                break
            executor.submit(strategies[queue.pop(0)])
        for outcome in executor.poll(timeout=1.0):
            results[index[outcome.strategy.key()]] = _score(outcome)
            if progress:
                progress(len(results), len(todo))
    return results


def _score(outcome: Outcome) -> Score | None:
    return None if not outcome.ok or outcome.result is None else Score.of(outcome.result)
