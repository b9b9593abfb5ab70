"""The search driver: agent → cache → executor → reward → records, MLflow and the report.

One loop for every agent. The driver is the only process that writes the search directory and
MLflow; workers only measure. While a candidate is being measured the agent may `think` (PPO
trains on its surrogate), so agent time overlaps measurement time instead of adding to it.

Search directory (``SearchConfig.out``)::

    search.json        resolved config, MLflow ids, status and summary (rewritten as it goes)
    candidates.jsonl   one CandidateRecord per line, appended and fsynced as each one lands
    cache.jsonl        measured outcomes (the candidate cache; ``--cache`` shares one)
    checkpoints/       RLlib checkpoints (ppo)
    best_strategy.json the best candidate's strategy
    report/            report.md + pareto.png
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.base import Agent, Proposal
from agent.config import SearchConfig
from agent.records import CandidateRecord
from agent.wrapup import baseline_accuracy_of, baseline_summary, finish, summarize
from envs.reward import reward
from runners.job import EvalSpec, Outcome

if TYPE_CHECKING:
    from runners.build import BuildConfig

STALL_LIMIT = 500
"""Consecutive proposals that were all already measured before the search gives up."""


@dataclass
class SearchProgress:
    """What the live display shows."""

    phase: str
    evaluated: int
    budget: int
    best_reward: float = -math.inf
    best_speedup_1pt: float = math.nan
    elapsed: float = 0.0
    failed: int = 0
    detail: str = ""


@dataclass
class SearchResult:
    """What a finished (or interrupted) search returns."""

    out: Path
    records: list[CandidateRecord]
    summary: dict[str, Any]
    parent_run_id: str | None
    interrupted: bool = False
    timings: dict[str, float] = field(default_factory=dict)


def default_out_dir(config: SearchConfig, root: Path = Path("runs")) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    name = (config.workload or "byo").replace("/", "_")
    path = root / f"{stamp}-{name}-{config.agent}"
    n = 1
    while path.exists():
        n += 1
        path = root / f"{stamp}-{name}-{config.agent}-{n}"
    return path


def build_config(config: SearchConfig) -> BuildConfig:
    """How the search builds each candidate (BatchNorm re-estimation, recovery level)."""
    from runners.build import BuildConfig
    from runners.recovery import recovery_preset

    return BuildConfig(bn_batches=config.bn_batches, recovery=recovery_preset(config.recovery))


def eval_spec(config: SearchConfig) -> EvalSpec:
    from runners.evaluate import EvalConfig

    return EvalSpec(
        workload=config.workload,
        model=config.model,
        seed=config.seed,
        cache_dir=config.cache_dir,
        eval=EvalConfig(
            runtime=config.runtime,
            threads=config.threads,
            latency=dataclasses.replace(config.latency, batch_size=config.batch_size),
            build=build_config(config),
        ),
    )


class _Timer:
    def __init__(self) -> None:
        self.totals: dict[str, float] = {}

    def add(self, name: str, seconds: float) -> None:
        self.totals[name] = self.totals.get(name, 0.0) + seconds

    def time(self, name: str) -> _Span:
        return _Span(self, name)


class _Span:
    def __init__(self, timer: _Timer, name: str) -> None:
        self.timer, self.name = timer, name

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.timer.add(self.name, time.perf_counter() - self.start)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    tmp.replace(path)


def _init_ray(config: SearchConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    if config.address:
        ray.init(address=config.address, log_to_driver=False)
    else:
        ray.init(num_cpus=max(2, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)


def _split_cpus(config: SearchConfig) -> list[int] | None:
    """Measurement worker gets the last ``threads`` cores, the driver the rest (if any)."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) <= config.threads:
        return None
    worker = cpus[-config.threads :]
    os.sched_setaffinity(0, set(cpus[: -config.threads]))
    return worker


def run_search(
    config: SearchConfig, on_progress: Callable[[SearchProgress], None] | None = None
) -> SearchResult:
    """Run one search to its budget (or Ctrl-C) and return what it found.

    Everything measured is on disk and in MLflow as soon as it lands; an interrupted search
    returns with ``interrupted=True`` after writing its report.
    """
    import torch

    from agent.tracking import Tracker
    from runners import get_runtime
    from runners.build import Subject
    from runners.cache import CandidateCache
    from runners.evaluate import check_evaluable
    from search_spaces import Strategy
    from search_spaces.space import DecisionSpace

    timer = _Timer()
    t0 = time.perf_counter()
    spec = eval_spec(config)
    progress = SearchProgress("starting", 0, config.budget)

    def emit(phase: str, detail: str = "") -> None:
        progress.phase, progress.detail = phase, detail
        progress.elapsed = time.perf_counter() - t0
        if on_progress is not None:
            on_progress(progress)

    emit("loading workload")
    torch.set_num_threads(1)
    subject = Subject.prepare(spec.load_workload())
    check_evaluable(subject, Strategy(), spec.eval)  # runtime usable here, before any work
    runtime = get_runtime(config.runtime, threads=config.threads)
    space = DecisionSpace(subject.units, actions=config.actions, precisions=runtime.precisions)

    out = config.out or default_out_dir(config)
    out.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {"config": config.to_dict(), "status": "RUNNING", "mlflow": None}
    _write_json(out / "search.json", state)
    if config.agent in ("ppo", "tpe") or config.executor == "ray" or config.address:
        _init_ray(config)

    emit("starting executor", "measuring the baseline")
    executor = _make_executor(config, spec)
    records: list[CandidateRecord] = []
    run_ids: dict[int, str] = {}
    tracker = None
    agent: Agent | None = None
    interrupted = False
    status = "FINISHED"
    try:
        baseline = baseline_summary(executor.start())
        cache = CandidateCache(config.cache or out / "cache.jsonl", spec.cache_scope())
        tracker = Tracker(config.tracking_uri, config.experiment, workdir=Path.cwd())
        workload_info = {
            "name": subject.workload.name,
            "units": len(subject.units),
            "steps": len(space),
            "actions": ",".join(space.action_names),
        }
        with timer.time("tracking"):
            parent = tracker.start_search(
                out.name, config.to_dict(), workload_info, baseline, out.resolve()
            )
        state["mlflow"] = {
            "tracking_uri": tracker.tracking_uri,
            "experiment_id": tracker.experiment_id,
            "parent_run_id": parent,
        }
        state["baseline"] = baseline
        _write_json(out / "search.json", state)
        timer.add("startup", time.perf_counter() - t0)

        with timer.time("agent_setup"):
            agent = _make_agent(config, space, executor, spec, out, emit, timer)

        by_key: dict[str, CandidateRecord] = {}
        in_flight: dict[str, Proposal] = {}
        lookahead = executor.slots + 1
        stall = 0
        log = (out / "candidates.jsonl").open("a")

        def land(outcome: Outcome, proposal: Proposal, cached: bool) -> None:
            result = outcome.result if outcome.ok else None
            record = CandidateRecord(
                index=len(records),
                outcome=outcome,
                reward=reward(result, config.reward),
                source=agent.name if agent else config.agent,
                cached=cached,
                extras=proposal.extras,
            )
            records.append(record)
            by_key[record.strategy.key()] = record
            log.write(json.dumps(record.to_dict(), default=str) + "\n")
            log.flush()
            os.fsync(log.fileno())
            with timer.time("tracking"):
                assert tracker is not None
                run_ids[record.index] = tracker.log_candidate(record)
            with timer.time("agent"):
                assert agent is not None
                agent.tell(record)
            progress.evaluated = len(records)
            progress.failed += not record.ok
            progress.best_reward = max(progress.best_reward, record.reward)
            if record.ok and record.accuracy_drop <= 1.0:
                best = progress.best_speedup_1pt
                progress.best_speedup_1pt = (
                    record.speedup if math.isnan(best) else max(best, record.speedup)
                )
            if not cached:
                timer.add("eval", outcome.eval_seconds)
            emit("searching")

        emit("searching")
        while True:
            room = config.budget - len(records) - len(in_flight)
            while room > 0 and len(in_flight) < lookahead and not agent.exhausted:
                with timer.time("agent"):
                    proposal = agent.ask()
                if proposal is None:
                    break
                key = proposal.strategy.key()
                if key in by_key or key in in_flight:
                    stall += 1
                    if key in by_key:
                        with timer.time("agent"):
                            agent.tell(by_key[key])
                    if stall >= STALL_LIMIT:
                        break
                    continue
                stall = 0
                hit = cache.get(proposal.strategy)
                if hit is not None:
                    land(hit, proposal, cached=True)
                    room -= 1
                    continue
                executor.submit(proposal.strategy)
                in_flight[key] = proposal
                room -= 1
            if not in_flight:
                if room <= 0 or agent.exhausted or stall >= STALL_LIMIT:
                    break
                with timer.time("agent"):
                    agent.think()  # nothing to propose yet (PPO warm-up)
                continue
            outcomes = executor.poll(timeout=0)
            if not outcomes:
                start = time.perf_counter()
                agent.think()
                spent = time.perf_counter() - start
                timer.add("agent_overlapped", spent)
                if spent < 0.05:  # nothing to think about: wait for the measurement
                    outcomes = executor.poll(timeout=1.0)
            for outcome in outcomes:
                proposal = in_flight.pop(outcome.strategy.key())
                cache.put(outcome)
                land(outcome, proposal, cached=False)
        log.close()
    except KeyboardInterrupt:
        interrupted, status = True, "KILLED"
    except BaseException:
        status = "FAILED"
        raise
    finally:
        executor.close()
        wall = time.perf_counter() - t0
        summary = summarize(records, baseline_accuracy_of(state), timer.totals, wall)
        if agent is not None:
            summary["agent_iterations"] = getattr(agent, "iterations", 0)
        state.update(status=status, summary=summary, runs={str(k): v for k, v in run_ids.items()})
        _write_json(out / "search.json", state)
        if tracker is not None and state.get("mlflow"):
            finish(tracker, config, subject, records, run_ids, summary, status, out, state)
        if agent is not None:
            agent.close()
    return SearchResult(
        out,
        records,
        summary,
        (state.get("mlflow") or {}).get("parent_run_id"),
        interrupted,
        dict(timer.totals),
    )


def _make_executor(config: SearchConfig, spec: EvalSpec) -> Any:
    from runners.executor import LocalExecutor
    from runners.ray_executor import RayExecutor

    if config.executor == "ray" or config.address:
        return RayExecutor(spec, timeout_s=config.timeout_s, cpus_per_worker=config.threads)
    return LocalExecutor(spec, timeout_s=config.timeout_s, cpus=_split_cpus(config))


def _make_agent(
    config: SearchConfig,
    space: Any,
    executor: Any,
    spec: EvalSpec,
    out: Path,
    emit: Callable[[str, str], None],
    timer: _Timer,
) -> Agent:
    from agent.baselines import RandomAgent, TPEAgent, UniformAgent

    if config.agent == "random":
        return RandomAgent(space, config.agent_seed)
    if config.agent == "uniform":
        return UniformAgent(space, config.agent_seed)
    if config.agent == "tpe":
        return TPEAgent(space, config.agent_seed)
    from agent.ppo import PPOAgent
    from agent.probes import measure_probes
    from envs.cost import flops_cost_model
    from envs.workloads.cache import default_cache_dir

    cost, probes = flops_cost_model(space), None
    if config.probes:
        table_dir = (config.cache_dir or default_cache_dir()) / "probes"
        start = time.perf_counter()
        cost, probes, _ = measure_probes(
            space,
            executor,
            table_dir,
            spec.cache_scope(),
            progress=lambda done, total: emit("probing", f"{done}/{total} single-choice probes"),
        )
        timer.add("probes", time.perf_counter() - start)
        _write_json(out / "cost_table.json", cost.to_dict())
    emit("building agent", "RLlib PPO")
    return PPOAgent(
        space,
        config.reward,
        cost,
        config.ppo,
        seed=config.agent_seed,
        checkpoint_dir=out / "checkpoints",
        probes=probes,
    )
