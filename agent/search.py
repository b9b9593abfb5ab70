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

Ctrl-C (or SIGTERM) while candidates are landing is deferred to the end of the current step, so
it never cuts a record, a cache line or an MLflow write in half; a second one stops at once.
A search that was killed outright (SIGKILL, a crash, a lost machine) resumes with
``resume=True`` (`resume_state`): its records are read back, measured outcomes that had not
landed yet come from its cache, the agent is restored (PPO from its last checkpoint, then told
every record), and new candidates join the same MLflow parent run until the budget is spent.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import threading
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

logger = logging.getLogger(__name__)

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
            time_latency=config.measure == "latency",
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
    """Join ``config.address``, or start the embedded local instance (no dashboard).

    Ray 2.60's core servers (GCS, raylet, workers) listen on every interface whatever node IP
    they are given; its token authentication (on by default, never turned off here) is what
    keeps others out, so a warning is logged when a user has turned it off.
    """
    import ray

    if ray.is_initialized():
        return
    if config.address:
        host = config.address.removeprefix("ray://").rsplit(":", 1)[0]
        local: dict[str, Any] = {}
        if not config.address.startswith("ray://") and _is_loopback(host):
            # a cluster on this machine's loopback (its node IP): the driver joins it there
            local["_node_ip_address"] = host
        ray.init(address=config.address, log_to_driver=False, **local)
    else:
        ray.init(
            num_cpus=max(2, os.cpu_count() or 1),
            include_dashboard=False,
            log_to_driver=False,
        )
    _warn_if_unauthenticated()


def _is_loopback(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _warn_if_unauthenticated() -> None:
    """Ray's servers listen beyond loopback; its token authentication is what guards them."""
    from ray._private.authentication.authentication_utils import is_token_auth_enabled

    if not is_token_auth_enabled():
        logger.warning(
            "Ray token authentication is OFF (RAY_AUTH_MODE=disabled?): anyone who can reach "
            "this machine's Ray ports can run code on it. Unset RAY_AUTH_MODE to turn it on."
        )


def _placement(config: SearchConfig) -> tuple[list[int] | None, list[int] | None]:
    """Cores of the local workers: (where they run, where they time); the driver keeps the
    cores they do not run on.

    One worker runs on the last ``threads`` cores. Several workers build on the other cores and
    move onto the last ``threads`` ones only to time (one at a time: `runners.measure_lock`).
    Latency-free (``measure = "flops"``) workers are not pinned.
    """
    if not hasattr(os, "sched_getaffinity"):
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) <= config.threads:
        return None, None
    timing, rest = cpus[-config.threads :], cpus[: -config.threads]
    if config.workers == 1:
        os.sched_setaffinity(0, set(rest))
        return timing, None
    if config.measure == "flops":
        return None, None
    os.sched_setaffinity(0, set(rest))
    return rest, timing


class _Interrupts:
    """Ctrl-C and SIGTERM, deferred while `defer` is set: the first sets `requested` (the loop
    stops at its next `check`); a second one, or one while not deferring, interrupts at once."""

    def __init__(self) -> None:
        self.defer = False
        self.requested = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signals only reach the main thread; elsewhere Ctrl-C is the caller's
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested or not self.defer:
            raise KeyboardInterrupt
        self.requested = True

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class ResumeError(ValueError):
    """A search directory that cannot be resumed (the message says why)."""


def resume_state(out: Path) -> tuple[SearchConfig, dict[str, Any]]:
    """The config and state of the search in ``out``, for ``run_search(..., resume=True)``."""
    from agent.config import ConfigError, config_from_dict

    path = Path(out) / "search.json"
    if not path.is_file():
        raise ResumeError(f"cannot resume {out}: not a search directory (no search.json in it)")
    try:
        state = json.loads(path.read_text())
        config = config_from_dict(state["config"]).with_overrides(out=Path(out))
    except (ValueError, KeyError, TypeError, ConfigError) as exc:
        raise ResumeError(f"cannot resume {out}: {path} is unreadable ({exc})") from None
    if not (state.get("mlflow") or {}).get("parent_run_id"):
        raise ResumeError(
            f"cannot resume {out}: it stopped before its MLflow run was created, so nothing was "
            "evaluated; start the search again"
        )
    return config, state


def _trim_torn_line(path: Path) -> None:
    """Cut a last line that a kill left half-written, so appends start on a fresh line."""
    if not path.exists():
        return
    data = path.read_bytes()
    keep = data.rfind(b"\n") + 1
    if keep < len(data):
        with path.open("r+b") as f:
            f.truncate(keep)


def run_search(
    config: SearchConfig,
    on_progress: Callable[[SearchProgress], None] | None = None,
    *,
    resume: bool = False,
) -> SearchResult:
    """Run one search to its budget (or Ctrl-C) and return what it found.

    Everything measured is on disk and in MLflow as soon as it lands; an interrupted search
    returns with ``interrupted=True`` after writing its report. With ``resume=True`` the search in
    ``config.out`` (see `resume_state`) continues: nothing it evaluated is measured again, and
    its budget counts the candidates it already has.
    """
    import torch

    from agent.report import load_records
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
    interrupts = _Interrupts()

    def emit(phase: str, detail: str = "") -> None:
        interrupts.check()
        progress.phase, progress.detail = phase, detail
        progress.elapsed = time.perf_counter() - t0
        if on_progress is not None:
            on_progress(progress)

    records: list[CandidateRecord] = []
    if resume:
        if config.out is None:
            raise ResumeError("resume needs the search directory (config.out)")
        out = config.out
        _, state = resume_state(out)
        _trim_torn_line(out / "candidates.jsonl")
        records = load_records(out)
        if state.get("status") == "FINISHED" and len(records) >= config.budget:
            raise ResumeError(
                f"cannot resume {out}: it finished its budget of {len(records)} candidates; "
                f"give a larger --budget to extend it"
            )
        state.update(status="RUNNING", config=config.to_dict())
        state.setdefault("resumed", []).append(datetime.now().isoformat(timespec="seconds"))
    else:
        out = config.out or default_out_dir(config)
        state = {"config": config.to_dict(), "status": "RUNNING", "mlflow": None}

    emit("loading workload")
    torch.set_num_threads(1)
    subject = Subject.prepare(spec.load_workload())
    check_evaluable(subject, Strategy(), spec.eval)  # runtime usable here, before any work
    runtime = get_runtime(config.runtime, threads=config.threads)
    space = DecisionSpace(subject.units, actions=config.actions, precisions=runtime.precisions)

    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "search.json", state)
    if config.agent in ("ppo", "tpe") or config.executor == "ray" or config.address:
        _init_ray(config)

    emit("starting executor", "measuring the baseline")
    executor = _make_executor(config, spec)
    run_ids: dict[int, str] = {}
    tracker = None
    agent: Agent | None = None
    log = None
    status = "FINISHED"
    interrupts.install()
    try:
        measured_baseline = baseline_summary(executor.start())
        cache = CandidateCache(config.cache or out / "cache.jsonl", spec.cache_scope())
        tracker = Tracker(config.tracking_uri, config.experiment, workdir=Path.cwd())
        interrupts.defer = True  # from here on a signal waits for the current write to end
        with timer.time("tracking"):
            if resume:
                run_ids = tracker.resume_search(state["mlflow"]["parent_run_id"], records)
            else:
                workload_info = {
                    "name": subject.workload.name,
                    "units": len(subject.units),
                    "steps": len(space),
                    "actions": ",".join(space.action_names),
                }
                parent = tracker.start_search(
                    out.name, config.to_dict(), workload_info, measured_baseline, out.resolve()
                )
                state["mlflow"] = {
                    "tracking_uri": tracker.tracking_uri,
                    "experiment_id": tracker.experiment_id,
                    "parent_run_id": parent,
                }
                state["baseline"] = measured_baseline
        _write_json(out / "search.json", state)
        timer.add("startup", time.perf_counter() - t0)

        with timer.time("agent_setup"):
            agent = _make_agent(config, space, executor, spec, out, emit, timer)
            _restore_agent(agent, records)

        by_key: dict[str, CandidateRecord] = {r.strategy.key(): r for r in records}
        in_flight: dict[str, Proposal] = {}
        lookahead = executor.slots + 1
        stall = 0
        log = (out / "candidates.jsonl").open("a")
        for record in records:
            progress.failed += not record.ok
            progress.best_reward = max(progress.best_reward, record.reward)
            _note_best(progress, record)
        progress.evaluated = len(records)

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
            assert log is not None
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
            _note_best(progress, record)
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
        runs = {**state.get("runs", {}), **{str(k): v for k, v in run_ids.items()}}
        state.update(status=status, summary=summary, runs=runs)
        _write_json(out / "search.json", state)
        if tracker is not None and tracker.parent_run_id is not None:
            finish(tracker, config, subject, records, run_ids, summary, status, out, state)
        if agent is not None:
            agent.close()
    return SearchResult(
        out,
        records,
        summary,
        (state.get("mlflow") or {}).get("parent_run_id"),
        status == "KILLED",
        dict(timer.totals),
    )


def _note_best(progress: SearchProgress, record: CandidateRecord) -> None:
    if record.ok and record.accuracy_drop <= 1.0:
        best = progress.best_speedup_1pt
        progress.best_speedup_1pt = (
            record.speedup if math.isnan(best) else max(best, record.speedup)
        )


def _restore_agent(agent: Agent, records: list[CandidateRecord]) -> None:
    """Bring a fresh agent up to date with a resumed search's records."""
    restore = getattr(agent, "restore", None)
    if restore is not None:
        restore(records)
    else:
        for record in records:
            agent.tell(record)


def _make_executor(config: SearchConfig, spec: EvalSpec) -> Any:
    from runners.executor import LocalExecutor
    from runners.ray_executor import RayExecutor

    if config.executor == "ray" or config.address:
        return RayExecutor(
            spec, timeout_s=config.timeout_s, cpus_per_worker=config.threads, workers=config.workers
        )
    cpus, timing = _placement(config)
    return LocalExecutor(
        spec, timeout_s=config.timeout_s, cpus=cpus, workers=config.workers, measure_cpus=timing
    )


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
