"""The search driver: agent → cache → executor → reward → records, MLflow and the report.

One loop for every agent. The driver is the only process that writes the search directory
(through `agent.search_dir.SearchDir`, which documents its layout) and MLflow; workers only
measure. While a candidate is being measured the agent may `think` (PPO trains on its
surrogate), so agent time overlaps measurement time instead of adding to it.

Around the loop, one module per concern: `agent.ray_init` (Ray, started or joined once),
`agent.placement` (the driver's CPU affinity and torch threads, restored when the search
ends), `agent.interrupts` (Ctrl-C / SIGTERM), `agent.resume` (continuing a killed search),
`agent.factories` (executor and agent) and `agent.wrapup` (summary, front, best model, report).

Ctrl-C (or SIGTERM) while candidates are landing is deferred to the end of the current step, so
it never cuts a record, a cache line or an MLflow write in half; a second one stops at once.
A search that was killed outright resumes with ``resume=True`` (`agent.resume`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from agent.base import Agent, Proposal
from agent.config import SearchConfig, eval_spec
from agent.factories import make_agent, make_executor, restore_agent, uses_ray_executor
from agent.interrupts import Interrupts
from agent.placement import NOT_PINNED, pin_driver, plan_placement, torch_threads
from agent.ray_init import init_ray, needs_ray
from agent.records import CandidateRecord
from agent.resume import reopen
from agent.search_dir import CandidateLog, SearchDir, SearchState, SearchStatus, TrackingIds
from agent.wrapup import baseline_accuracy_of, baseline_summary, finish, summarize
from envs.reward import reward
from runners.job import Outcome

STALL_LIMIT = 500
"""Consecutive proposals that were all already measured before the search gives up."""


@dataclass
class SearchProgress:
    """What the live display shows."""

    phase: str
    """What the driver is doing (``loading workload``, ``probing``, ``searching``...)."""
    evaluated: int
    """Candidates recorded so far."""
    budget: int
    """Candidates the search will record."""
    best_reward: float = -math.inf
    """The best reward so far."""
    best_speedup_1pt: float = math.nan
    """The best speedup within 1 accuracy point so far (NaN: none yet)."""
    elapsed: float = 0.0
    """Seconds since the search started."""
    failed: int = 0
    """Candidates that failed."""
    detail: str = ""
    """A line about the current phase."""


@dataclass
class SearchResult:
    """What a finished (or interrupted) search returns."""

    out: Path
    """The search directory."""
    records: list[CandidateRecord]
    """Every candidate, in evaluation order."""
    summary: dict[str, Any]
    """The summary metrics (`agent.wrapup.summarize`)."""
    parent_run_id: str | None
    """The MLflow parent run (None if the search stopped before it was created)."""
    interrupted: bool = False
    """Stopped by Ctrl-C / SIGTERM."""
    timings: dict[str, float] = field(default_factory=dict)
    """Driver seconds by phase (``eval``, ``agent``, ``tracking``, ``probes``...)."""


def default_out_dir(config: SearchConfig, root: Path = Path("runs")) -> Path:
    """A new directory under ``root`` named by time, workload and agent."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    name = (config.workload or "byo").replace("/", "_")
    path = root / f"{stamp}-{name}-{config.agent}"
    n = 1
    while path.exists():
        n += 1
        path = root / f"{stamp}-{name}-{config.agent}-{n}"
    return path


class _Timer:
    """Driver seconds by name."""

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


def run_search(
    config: SearchConfig,
    on_progress: Callable[[SearchProgress], None] | None = None,
    *,
    resume: bool = False,
) -> SearchResult:
    """Run one search to its budget (or Ctrl-C) and return what it found.

    Everything measured is on disk and in MLflow as soon as it lands; an interrupted search
    returns with ``interrupted=True`` after writing its report. With ``resume=True`` the search in
    ``config.out`` (see `agent.resume.resume_state`) continues: nothing it evaluated is measured
    again, and its budget counts the candidates it already has.

    The driver's CPU affinity and torch thread count are what they were before, once this
    returns or raises.

    Raises:
        agent.resume.ResumeError: ``resume=True`` and the directory cannot be resumed.
    """
    with ExitStack() as process:  # what the driver changes in its own process, undone at exit
        return _run(config, on_progress, resume, process)


def _run(
    config: SearchConfig,
    on_progress: Callable[[SearchProgress], None] | None,
    resume: bool,
    process: ExitStack,
) -> SearchResult:
    from agent.tracking import Tracker
    from runners import get_runtime
    from runners.build import Subject
    from runners.evaluate import check_evaluable
    from search_spaces import Strategy
    from search_spaces.space import DecisionSpace

    timer = _Timer()
    t0 = time.perf_counter()
    progress = SearchProgress("starting", 0, config.budget)
    interrupts = Interrupts()

    def emit(phase: str, detail: str = "") -> None:
        interrupts.check()
        progress.phase, progress.detail = phase, detail
        progress.elapsed = time.perf_counter() - t0
        if on_progress is not None:
            on_progress(progress)

    records: list[CandidateRecord] = []
    if resume:
        reopened = reopen(config)
        sdir, state, records = reopened.sdir, reopened.state, reopened.records
    else:
        sdir = SearchDir(config.out or default_out_dir(config))
        state = SearchState(config=config.to_dict(), status="RUNNING", eval_spec=eval_spec(config))
    assert state.eval_spec is not None
    spec = state.eval_spec

    emit("loading workload")
    process.enter_context(torch_threads(1))
    subject = Subject.prepare(spec.load_workload())
    check_evaluable(subject, Strategy(), spec.eval)  # runtime usable here, before any work
    runtime = get_runtime(config.runtime, threads=config.threads)
    space = DecisionSpace(subject.units, actions=config.actions, precisions=runtime.precisions)

    sdir.write_state(state)
    if needs_ray(config):
        init_ray(config)  # before the driver is pinned: Ray's processes inherit its cores

    emit("starting executor", "measuring the baseline")
    placement = NOT_PINNED if uses_ray_executor(config) else plan_placement(config)
    process.enter_context(pin_driver(placement.driver_cpus))
    executor = make_executor(config, spec, placement)
    run_ids: dict[int, str] = {}
    tracker = None
    agent: Agent | None = None
    log: CandidateLog | None = None
    status: SearchStatus = "FINISHED"
    interrupts.install()
    try:
        measured_baseline = baseline_summary(executor.start())
        cache = sdir.cache(spec.cache_scope(), shared=config.cache)
        tracker = Tracker(config.tracking_uri, config.experiment, workdir=Path.cwd())
        interrupts.defer = True  # from here on a signal waits for the current write to end
        with timer.time("tracking"):
            if resume:
                assert state.parent_run_id is not None
                run_ids = tracker.resume_search(state.parent_run_id, records)
            else:
                workload_info = {
                    "name": subject.workload.name,
                    "units": len(subject.units),
                    "steps": len(space),
                    "actions": ",".join(space.action_names),
                }
                parent = tracker.start_search(
                    sdir.name,
                    config.to_dict(),
                    workload_info,
                    measured_baseline,
                    sdir.path.resolve(),
                    eval_spec=spec.to_dict(),
                )
                ids = TrackingIds(tracker.tracking_uri, tracker.experiment_id, parent)
                state = replace(state, mlflow=ids, baseline=measured_baseline)
        sdir.write_state(state)
        timer.add("startup", time.perf_counter() - t0)

        with timer.time("agent_setup"):
            agent = make_agent(config, space, executor, spec, sdir, emit, timer.add)
            restore_agent(agent, records)

        by_key: dict[str, CandidateRecord] = {r.strategy.key(): r for r in records}
        in_flight: dict[str, Proposal] = {}
        lookahead = executor.slots + 1
        stall = 0
        log = sdir.candidate_log()
        for record in records:
            _note(progress, record)
        progress.evaluated = len(records)

        def land(outcome: Outcome, proposal: Proposal, cached: bool) -> None:
            assert agent is not None and tracker is not None and log is not None
            record = CandidateRecord(
                index=len(records),
                outcome=outcome,
                reward=reward(outcome.result if outcome.ok else None, config.reward),
                source=agent.name,
                cached=cached,
                extras=proposal.extras,
            )
            records.append(record)
            by_key[record.strategy.key()] = record
            log.append(record)
            with timer.time("tracking"):
                run_ids[record.index] = tracker.log_candidate(record)
            with timer.time("agent"):
                agent.tell(record)
            progress.evaluated = len(records)
            _note(progress, record)
            if not cached:
                timer.add("eval", outcome.eval_seconds)
            emit("searching")

        if resume and config.cache is None:
            # measured before the kill, but killed before they landed: land them now
            for outcome in cache.outcomes():
                key = outcome.strategy.key()
                if key not in by_key and len(records) < config.budget:
                    land(outcome, Proposal(outcome.strategy, {"origin": "resumed"}), cached=False)

        emit("searching")
        while True:
            interrupts.check()
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
    except KeyboardInterrupt:
        status = "KILLED"
    except BaseException:
        status = "FAILED"
        raise
    finally:
        interrupts.restore()
        if log is not None:
            log.close()
        executor.close()
        wall = time.perf_counter() - t0
        summary = summarize(records, baseline_accuracy_of(state), timer.totals, wall)
        if agent is not None:
            summary["agent_iterations"] = getattr(agent, "iterations", 0)
        runs = {**state.runs, **{str(k): v for k, v in run_ids.items()}}
        state = replace(state, status=status, summary=summary, runs=runs)
        sdir.write_state(state)
        if tracker is not None and tracker.parent_run_id is not None:
            finish(tracker, config, subject, records, run_ids, summary, status, sdir, state)
        if agent is not None:
            agent.close()
    return SearchResult(
        sdir.path,
        records,
        summary,
        state.parent_run_id,
        status == "KILLED",
        dict(timer.totals),
    )


def _note(progress: SearchProgress, record: CandidateRecord) -> None:
    """Count ``record`` into the live display's failures and bests."""
    progress.failed += not record.ok
    progress.best_reward = max(progress.best_reward, record.reward)
    if record.ok and record.accuracy_drop <= 1.0:
        best = progress.best_speedup_1pt
        progress.best_speedup_1pt = (
            record.speedup if math.isnan(best) else max(best, record.speedup)
        )


__all__ = [
    "STALL_LIMIT",
    "SearchProgress",
    "SearchResult",
    "default_out_dir",
    "run_search",
]
