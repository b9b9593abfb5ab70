"""The search driver with a scripted executor: failures, caching, tracking, records on disk."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from agent import search as search_module
from agent.config import SearchConfig
from agent.report import load_records
from envs.reward import FAILED_REWARD
from runners.job import Outcome
from search_spaces import Strategy


class ScriptedExecutor:
    """Measures nothing: every 3rd strategy fails, every 4th gives a NaN metric."""

    slots = 1

    def __init__(self) -> None:
        self.submitted: list[Strategy] = []
        self._done: list[Outcome] = []

    def start(self) -> dict[str, Any]:
        return {"accuracy": 99.0, "latency": {"median_ms": 2.0, "p90_ms": 2.1}, "flops": 1000}

    def submit(
        self, strategy: Strategy, timeout_s: float | None = None, fidelity: str | None = None
    ) -> None:
        self.submitted.append(strategy)
        n = len(self.submitted)
        level = fidelity or "none"
        if n % 3 == 0:
            failed = Outcome(
                strategy, "failed", error="RuntimeError: boom", worker="w", fidelity=level
            )
            self._done.append(failed)
            return
        speedup = 1.0 + 0.1 * len(strategy.units)
        drop = math.nan if n % 4 == 0 else 0.2 * len(strategy.units)
        result = {
            "accuracy": 99.0 - (0 if math.isnan(drop) else drop),
            "accuracy_drop": drop,
            "speedup": speedup,
            "latency_ms": 2.0 / speedup,
            "flops": 900,
        }
        ok = Outcome(strategy, "ok", result, eval_seconds=0.01, worker="w", fidelity=level)
        self._done.append(ok)

    def poll(self, timeout: float | None = None) -> list[Outcome]:
        out, self._done = self._done, []
        return out

    @property
    def pending(self) -> int:
        return len(self._done)

    def close(self) -> None:
        pass


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> ScriptedExecutor:
    executor = ScriptedExecutor()
    monkeypatch.setattr(search_module, "make_executor", lambda config, spec, placement: executor)
    return executor


def config(tmp_path: Path, **kw: Any) -> SearchConfig:
    defaults: dict[str, Any] = {
        "agent": "random",
        "budget": 8,
        "out": tmp_path / "search",
        "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "log_model": False,
        "fidelities": ("none",),  # one level: these tests are about the loop, not promotion
    }
    return SearchConfig(**{**defaults, **kw})


def test_failed_candidates_are_recorded_penalised_and_the_search_goes_on(
    tmp_path: Path, scripted: ScriptedExecutor, workload_cache: Path
) -> None:
    result = search_module.run_search(config(tmp_path, cache_dir=workload_cache))
    records = result.records
    assert len(records) == 8 == len(scripted.submitted)
    failed = [r for r in records if not r.ok]
    assert len(failed) == 2
    assert all(r.reward == FAILED_REWARD for r in failed)
    nan = [r for r in records if r.ok and math.isnan(r.accuracy_drop)]
    assert nan and all(r.reward == FAILED_REWARD for r in nan)  # NaN never reaches an agent
    assert all(math.isfinite(r.reward) for r in records)

    on_disk = load_records(result.out)
    assert [r.strategy for r in on_disk] == [r.strategy for r in records]
    state = json.loads((result.out / "search.json").read_text())
    assert state["status"] == "FINISHED" and state["summary"]["failed"] == 2
    assert (result.out / "report" / "report.md").exists()

    client = MlflowClient(config(tmp_path).tracking_uri)
    runs = client.search_runs(
        [state["mlflow"]["experiment_id"]],
        f"tags.mlflow.parentRunId = '{result.parent_run_id}'",
    )
    assert len(runs) == 8
    assert sum(r.info.status == "FAILED" for r in runs) == 2
    assert client.get_run(result.parent_run_id).info.status == "FINISHED"


def test_cache_shared_between_searches_is_never_measured_again(
    tmp_path: Path, scripted: ScriptedExecutor, workload_cache: Path
) -> None:
    shared = tmp_path / "shared-cache.jsonl"
    first = search_module.run_search(
        config(tmp_path, agent="uniform", cache=shared, cache_dir=workload_cache)
    )
    measured = len(scripted.submitted)
    second = search_module.run_search(
        config(
            tmp_path,
            agent="uniform",
            cache=shared,
            out=tmp_path / "again",
            cache_dir=workload_cache,
        )
    )
    assert len(scripted.submitted) == measured  # nothing new was measured
    assert all(r.cached for r in second.records)
    assert [r.strategy for r in second.records] == [r.strategy for r in first.records]


def test_interrupt_keeps_everything_evaluated(
    tmp_path: Path,
    scripted: ScriptedExecutor,
    workload_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = scripted.poll
    calls = {"n": 0}

    def poll(timeout: float | None = None) -> list[Outcome]:
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return original(timeout)

    monkeypatch.setattr(scripted, "poll", poll)
    result = search_module.run_search(config(tmp_path, budget=50, cache_dir=workload_cache))
    assert result.interrupted
    assert 0 < len(result.records) < 50
    state = json.loads((result.out / "search.json").read_text())
    assert state["status"] == "KILLED"
    assert len(load_records(result.out)) == len(result.records)


def test_search_restores_the_drivers_cpu_affinity_and_torch_threads(
    tmp_path: Path, scripted: ScriptedExecutor, workload_cache: Path
) -> None:
    import os

    import torch

    before_cpus = os.sched_getaffinity(0)
    before_threads = torch.get_num_threads()
    during: list[tuple[set[int], int]] = []
    submit = scripted.submit

    def watched(
        strategy: Strategy, timeout_s: float | None = None, fidelity: str | None = None
    ) -> None:
        during.append((os.sched_getaffinity(0), torch.get_num_threads()))
        submit(strategy, timeout_s, fidelity)

    scripted.submit = watched  # type: ignore[method-assign]
    torch.set_num_threads(2)  # anything but the search's 1
    try:
        search_module.run_search(config(tmp_path, budget=3, cache_dir=workload_cache))

        assert during and all(threads == 1 for _, threads in during)
        if len(before_cpus) > 1:  # one worker: the driver leaves it the last core
            assert all(cpus == before_cpus - {max(before_cpus)} for cpus, _ in during)
        assert os.sched_getaffinity(0) == before_cpus
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before_threads)
        os.sched_setaffinity(0, before_cpus)


def test_search_restores_them_when_it_fails(
    tmp_path: Path, scripted: ScriptedExecutor, workload_cache: Path
) -> None:
    import os

    import torch

    before_cpus = os.sched_getaffinity(0)
    before_threads = torch.get_num_threads()

    def crash(timeout: float | None = None) -> list[Outcome]:
        raise RuntimeError("the executor broke")

    scripted.poll = crash  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="the executor broke"):
        search_module.run_search(config(tmp_path, budget=3, cache_dir=workload_cache))

    assert os.sched_getaffinity(0) == before_cpus
    assert torch.get_num_threads() == before_threads
    state = json.loads((tmp_path / "search" / "search.json").read_text())
    assert state["status"] == "FAILED"


def test_the_agent_trains_at_most_its_share_of_the_time_beside_local_workers(
    tmp_path: Path, workload_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent that would train through every wait (PPO) gets THINK_SHARE of the wall time
    while this machine's workers measure: its training slows theirs."""
    from agent.baselines import RandomAgent

    clock = {"now": 0.0}
    monkeypatch.setattr(search_module.time, "perf_counter", lambda: clock["now"])

    class SlowExecutor(ScriptedExecutor):
        """Each outcome arrives 10 (fake) seconds after it was submitted."""

        def __init__(self) -> None:
            super().__init__()
            self._waiting: list[tuple[float, Outcome]] = []

        def submit(self, strategy, timeout_s=None, fidelity=None) -> None:
            super().submit(strategy, timeout_s, fidelity)
            self._waiting += [(clock["now"] + 10.0, o) for o in self._done]
            self._done = []

        def poll(self, timeout=None) -> list[Outcome]:
            clock["now"] += timeout or 0.0
            ready = [o for t, o in self._waiting if t <= clock["now"]]
            self._waiting = [(t, o) for t, o in self._waiting if t > clock["now"]]
            return ready

        @property
        def pending(self) -> int:
            return len(self._waiting)

    class Thinker(RandomAgent):
        def think(self) -> None:
            clock["now"] += 0.5

    executor = SlowExecutor()
    monkeypatch.setattr(search_module, "make_executor", lambda config, spec, placement: executor)
    monkeypatch.setattr(search_module, "make_agent", lambda config, space, *a: Thinker(space, 0))
    result = search_module.run_search(
        SearchConfig(
            agent="random",
            budget=6,
            out=tmp_path / "s",
            log_model=False,
            tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
            fidelities=("none",),
            seeds=False,
            cache_dir=workload_cache,
        )
    )
    thought = result.timings["agent_overlapped"]
    assert thought > 0  # it did train while waiting
    assert thought <= search_module.THINK_SHARE * result.summary["wall_seconds"] + 0.5
