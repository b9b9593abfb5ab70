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

Long module: the loop is one function whose closures (`land`, `next_job`) share its state
(records, caches, in-flight measurements, the phase); the fidelity rules it applies are in
`agent.fidelity`. Splitting the loop would pass that state through five signatures.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.base import Agent, Proposal
from agent.baselines import uniform_seeds
from agent.config import SearchConfig, eval_spec
from agent.factories import make_agent, make_executor, restore_agent, uses_ray_executor
from agent.fidelity import Calibration, Schedule, estimate, promotions, to_confirm
from agent.interrupts import Interrupts
from agent.placement import NOT_PINNED, pin_driver, plan_placement, torch_threads
from agent.ray_init import check_reachable, init_ray, needs_ray
from agent.records import CandidateRecord
from agent.resume import reopen
from agent.search_dir import (
    CandidateLog,
    SearchDir,
    SearchDirError,
    SearchState,
    SearchStatus,
    TrackingIds,
)
from agent.wrapup import baseline_accuracy_of, baseline_summary, finish, summarize
from envs.reward import reward
from runners.job import Outcome

if TYPE_CHECKING:
    from search_spaces import Strategy

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
        if sdir.path.exists() and not sdir.path.is_dir():
            raise SearchDirError(f"--out {sdir.path} is a file, not a directory for the search")
        if sdir.exists():
            raise SearchDirError(
                f"{sdir.path} already holds a search: continue it with `layerpilot search "
                f"--resume {sdir.path}`, or give a new --out"
            )
        state = SearchState(config=config.to_dict(), status="RUNNING", eval_spec=eval_spec(config))
    assert state.eval_spec is not None
    spec = state.eval_spec

    emit("loading workload")
    process.enter_context(torch_threads(1))
    subject = Subject.prepare(spec.load_workload())
    check_evaluable(subject, Strategy(), spec.eval)  # runtime usable here, before any work
    runtime = get_runtime(config.runtime, threads=config.threads)
    space = DecisionSpace(subject.units, actions=config.actions, precisions=runtime.precisions)

    check_reachable(config.address)  # before search.json says RUNNING
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

        schedule = Schedule(config.fidelities, config.eta)
        caches = {
            level: sdir.cache(spec.at(level).cache_scope(), shared=config.cache)
            for level in schedule.levels
        }
        by_key: dict[tuple[str, str], CandidateRecord] = {
            (r.strategy.key(), r.fidelity): r for r in records
        }
        proposed = {r.strategy.key() for r in records}
        """Distinct strategies the agent proposed (``budget`` counts these, not promotions)."""
        seeds = uniform_seeds(space)[: config.budget // 2] if config.seeds else []
        """The hand pipeline's strategies, measured before the agent's first proposal (at most
        half the budget; on resume those already proposed are skipped)."""
        in_flight: dict[tuple[str, str], Proposal] = {}
        lookahead = executor.slots + 1
        stall = 0
        confirmations = 0
        searching = True
        """Proposals and promotions are open; False once the confirmation phase began."""
        log = sdir.candidate_log()
        for record in records:
            _note(progress, record, schedule.top)
        progress.evaluated = len(proposed)

        def land(outcome: Outcome, proposal: Proposal, cached: bool) -> None:
            assert agent is not None and tracker is not None and log is not None
            raw = CandidateRecord(
                index=max((r.index for r in records), default=-1) + 1,  # a skipped line: a gap
                outcome=outcome,
                reward=reward(outcome.result if outcome.ok else None, config.reward),
                source=agent.name,
                cached=cached,
                extras=proposal.extras,
            )
            calibration = Calibration.fit(schedule, [*records, raw])
            drop, estimated_reward, estimated = estimate(raw, calibration, config.reward)
            optimistic = calibration.optimistic_drop(raw.fidelity, raw.accuracy_drop)
            record = replace(
                raw,
                reward=estimated_reward,
                deployed_drop=drop,
                estimated=estimated,
                optimistic_drop=optimistic if estimated and math.isfinite(optimistic) else None,
            )
            records.append(record)
            by_key[(record.strategy.key(), record.fidelity)] = record
            log.append(record)
            with timer.time("tracking"):
                run_ids[record.index] = tracker.log_candidate(record)
            with timer.time("agent"):
                agent.tell(record)
            progress.evaluated = len(proposed)
            _note(progress, record, schedule.top)
            if not cached:
                timer.add("eval", outcome.eval_seconds)
                timer.add(f"eval_{outcome.fidelity}", outcome.eval_seconds)
            emit("searching" if searching else "confirming", _levels(records, schedule))

        def may_think() -> bool:
            """Whether the agent may train now while measurements run: always beside a remote
            cluster, at most `THINK_SHARE` of the wall time beside workers on this machine."""
            if config.address is not None:
                return True
            elapsed = time.perf_counter() - t0
            return timer.totals.get("agent_overlapped", 0.0) <= THINK_SHARE * elapsed

        def proposals_open() -> bool:
            assert agent is not None
            return not agent.exhausted and stall < STALL_LIMIT and len(proposed) < config.budget

        def out_of_time(reserve: float) -> bool:
            limit = config.time_budget
            return limit is not None and time.perf_counter() - t0 + reserve >= limit

        def fits(level: str) -> bool:
            """Whether a measurement at ``level`` started now is expected to land within the
            time budget, after what is in flight (shared by the workers)."""
            costs = _costs(records, schedule)
            queued = sum(costs.get(lv, 0.0) for _, lv in in_flight) / max(executor.slots, 1)
            return not out_of_time(queued + costs[level])

        def next_job() -> tuple[Strategy, str, Proposal] | None:
            """The next measurement. Searching: a promotion, else a new proposal. Confirming:
            a confirmation at the deployed level; once those are done or none is due, the
            search goes on (promotions, then proposals) with whatever is expected to land
            before the deadline."""
            nonlocal stall, confirmations
            assert agent is not None
            busy = set(in_flight)
            if not searching and confirmations < config.confirm and not out_of_time(0.0):
                todo = to_confirm(records, schedule, config.reward, config.reward.max_drop, busy)
                if todo:
                    confirmations += 1
                    return todo[0], schedule.top, Proposal(todo[0], {"origin": "confirm"})
            due = promotions(records, schedule, config.reward, busy, bound=config.reward.max_drop)
            for strategy, level in due:
                if searching or fits(level):
                    return strategy, level, Proposal(strategy, {"origin": "promoted"})
            if not searching and not fits(schedule.first):
                return None
            while seeds and proposals_open():
                seed = seeds.pop(0)
                if seed.key() not in proposed:
                    proposed.add(seed.key())
                    return seed, schedule.first, Proposal(seed, {"origin": "seed"})
            while proposals_open():
                with timer.time("agent"):
                    proposal = agent.ask()
                if proposal is None:
                    return None
                key = proposal.strategy.key()
                if key in proposed:
                    stall += 1
                    known = by_key.get((key, schedule.first))
                    if known is not None:
                        with timer.time("agent"):
                            agent.tell(known)
                    continue
                stall = 0
                proposed.add(key)
                return proposal.strategy, schedule.first, proposal
            return None

        if resume and config.cache is None:
            # measured before the kill, but killed before they landed: land them now
            for level in schedule.levels:
                for outcome in caches[level].outcomes():
                    key = outcome.strategy.key()
                    if (key, level) in by_key:
                        continue
                    if level == schedule.first and len(proposed) >= config.budget:
                        continue
                    proposed.add(key)
                    land(outcome, Proposal(outcome.strategy, {"origin": "resumed"}), cached=False)

        emit("searching")
        while True:
            interrupts.check()
            reserve = _reserve(records, schedule, config, executor.slots)
            if searching and out_of_time(min(reserve, (config.time_budget or 0.0) / 3)):
                searching = False  # confirm now: at most a third of the budget is held back
            while len(in_flight) < lookahead:
                job = next_job()
                if job is None:
                    break
                strategy, level, proposal = job
                hit = caches[level].get(strategy)
                if hit is not None:
                    land(hit, proposal, cached=True)
                    continue
                executor.submit(strategy, timeout_s=_timeout(config, level), fidelity=level)
                in_flight[(strategy.key(), level)] = proposal
            if not in_flight:
                if searching and proposals_open():
                    with timer.time("agent"):
                        agent.think()  # nothing to propose yet (PPO warm-up)
                    continue
                if searching:
                    searching = False  # nothing more to propose or promote: confirm the front
                    emit("confirming", _levels(records, schedule))
                    continue
                break
            outcomes = executor.poll(timeout=0)
            if not outcomes:
                spent = 0.0
                if may_think():
                    start = time.perf_counter()
                    agent.think()
                    spent = time.perf_counter() - start
                    timer.add("agent_overlapped", spent)
                if spent < 0.05:  # nothing to think about (or enough thought): wait for it
                    outcomes = executor.poll(timeout=1.0)
            for outcome in outcomes:
                proposal = in_flight.pop((outcome.strategy.key(), outcome.fidelity))
                caches[outcome.fidelity].put(outcome)
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
        top = config.fidelities[-1]
        summary = summarize(records, baseline_accuracy_of(state), timer.totals, wall, top)
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


THINK_SHARE = 0.25
"""Share of the wall time an agent may train (PPO on its surrogate) while this machine's
workers measure. On the 2-core AMD EPYC VM, in one run of ``benchmarks/search_deployed.py``, a
full-recovery candidate cost 280 s beside a PPO driver that trained through every wait and
140 s beside TPE's idle driver (short: 43 s against 25 s): the driver's training halves the
worker's speed, although they run on different cores. Measurements are what a search cannot
do without; the extra policy updates are not."""


def _timeout(config: SearchConfig, fidelity: str) -> float:
    """The per-candidate limit at ``fidelity``: ``timeout_s`` plus as much again per 100
    recovery steps (a full recovery fine-tunes for minutes)."""
    from runners.recovery import recovery_preset

    return config.timeout_s * (1.0 + recovery_preset(fidelity).steps / 100)


def _costs(records: list[CandidateRecord], schedule: Schedule) -> dict[str, float]:
    """Expected seconds of one measurement at each level: its mean over this search's
    measurements; a level not measured yet is extrapolated linearly in recovery steps from the
    levels measured (10x the cheapest when only one is; 0 while nothing is measured: the first
    measurements tell)."""
    from runners.recovery import recovery_preset

    seconds: dict[int, list[float]] = {}
    for r in records:
        if not r.cached and r.fidelity in schedule.levels:
            seconds.setdefault(recovery_preset(r.fidelity).steps, []).append(r.outcome.eval_seconds)
    means = {steps: sum(v) / len(v) for steps, v in seconds.items()}
    costs: dict[str, float] = {}
    for level in schedule.levels:
        steps = recovery_preset(level).steps
        if steps in means:
            cost = means[steps]
        elif len(means) >= 2:
            (s0, m0), (s1, m1) = sorted(means.items())[-2:]
            cost = m1 + (m1 - m0) / (s1 - s0) * (steps - s1)
        elif means:
            cost = 10.0 * next(iter(means.values()))
        else:
            cost = 0.0
        costs[level] = max(cost, 0.0)
    return costs


def _reserve(
    records: list[CandidateRecord], schedule: Schedule, config: SearchConfig, slots: int
) -> float:
    """Seconds the confirmation phase is expected to need: ``confirm`` measurements at the top
    level (`_costs`), shared by ``slots`` workers, and the best model's rebuild when it is
    logged."""
    if len(schedule.levels) == 1 or config.confirm == 0:
        return 0.0
    cost = _costs(records, schedule)[schedule.top]
    return (config.confirm / max(slots, 1) + config.log_model) * cost


def _levels(records: list[CandidateRecord], schedule: Schedule) -> str:
    """``none 40 · short 9 · full 3``: records per fidelity, for the live display."""
    counts = {level: 0 for level in schedule.levels}
    for r in records:
        if r.fidelity in counts:
            counts[r.fidelity] += 1
    return " · ".join(f"{level} {n}" for level, n in counts.items())


def _note(progress: SearchProgress, record: CandidateRecord, deployed: str) -> None:
    """Count ``record`` into the live display's failures and bests (the best speedup only from
    measurements at the ``deployed`` fidelity)."""
    progress.failed += not record.ok
    progress.best_reward = max(progress.best_reward, record.reward)
    if record.ok and record.fidelity == deployed and record.accuracy_drop <= 1.0:
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
