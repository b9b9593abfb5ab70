"""The contract every executor honours, run against the local worker and the Ray actors."""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runners.build import BuildConfig
from runners.evaluate import EvalConfig
from runners.executor import Executor, WorkerStartError
from runners.job import EvalSpec, Outcome
from runners.local_executor import LocalExecutor
from runners.ray_executor import RayExecutor
from runners.result import EvalResult
from search_spaces import Strategy

from models import QUICK_LATENCY

#: Enough to exercise every path; far too short for latencies worth comparing.
FAST = EvalConfig(latency=QUICK_LATENCY, build=BuildConfig(bn_batches=2))
SKIP = Strategy.from_dict({"layer1.0": {"skip": True}})
UNKNOWN_UNIT = Strategy.from_dict({"layer9.conv1": {"skip": True}})
KINDS = ["local", "ray"]


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    ray = pytest.importorskip("ray")
    if ray.is_initialized():  # another module's cluster: use it, leave it running
        yield
        return
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _make(kind: str, spec: EvalSpec, request: pytest.FixtureRequest) -> Executor:
    if kind == "ray":
        request.getfixturevalue("ray_cluster")
        return RayExecutor(spec, timeout_s=120.0)
    return LocalExecutor(spec, timeout_s=120.0, cpus=[min(os.sched_getaffinity(0))])


@pytest.fixture(scope="module", params=KINDS)
def started(request, workload_cache: Path) -> Iterator[tuple[Executor, dict]]:
    spec = EvalSpec(workload="digits-resnet", cache_dir=workload_cache, eval=FAST)
    with _make(request.param, spec, request) as executor:
        baseline = executor.start()
        yield executor, baseline


def _run(executor: Executor, strategy: Strategy, timeout_s: float | None = None) -> Outcome:
    executor.submit(strategy, timeout_s=timeout_s)
    outcomes = executor.poll(timeout=None)
    assert [o.strategy for o in outcomes] == [strategy]
    assert executor.pending == 0
    return outcomes[0]


def _pid(executor: Executor) -> int:
    """The current worker's pid (a failing-at-build strategy returns at once)."""
    return int(_run(executor, UNKNOWN_UNIT).worker.rsplit(":", 1)[1])


@pytest.mark.slow
def test_start_returns_the_workers_baseline(started):
    executor, baseline = started

    assert executor.slots == 1  # one local worker; one Ray node
    assert baseline["latency"]["median_ms"] > 0
    assert 50 < baseline["accuracy"] <= 100


@pytest.mark.slow
def test_real_strategy_gives_ok_outcome_with_speedup_and_accuracy(started):
    executor, baseline = started

    outcome = _run(executor, SKIP)

    assert outcome.ok, outcome.error
    assert isinstance(outcome.result, EvalResult)  # typed again at the pipe's driver end
    assert outcome.result.speedup > 0
    assert math.isfinite(outcome.result.accuracy)
    assert outcome.result.baseline_latency_ms == baseline["latency"]["median_ms"]
    assert outcome.result.strategy == SKIP
    assert outcome.eval_seconds > 0
    assert outcome.worker.split(":")[1].isdigit()


@pytest.mark.slow
def test_strategy_failing_at_build_gives_failed_outcome_and_executor_keeps_working(started):
    executor, _ = started

    failed = _run(executor, UNKNOWN_UNIT)
    after = _run(executor, Strategy.from_dict({"layer1.1": {"skip": True}}))

    assert failed.status == "failed"
    assert failed.error is not None
    assert failed.error.startswith("UnknownUnitError:")
    assert "layer9.conv1" in failed.error
    assert after.ok, after.error


@pytest.mark.slow
def test_candidate_past_its_timeout_fails_and_a_fresh_worker_takes_the_next(started):
    executor, _ = started
    old_pid = _pid(executor)

    timed_out = _run(executor, SKIP, timeout_s=0.5)
    after = _run(executor, Strategy.from_dict({"layer1.2": {"skip": True}}))

    assert timed_out.status == "failed"
    assert timed_out.error == "TimeoutError: evaluation exceeded 0.5 s"
    assert after.ok, after.error
    assert after.worker != timed_out.worker
    assert int(after.worker.rsplit(":", 1)[1]) != old_pid


def _kill_while_running(executor: Executor, after: int = 0) -> int:
    """SIGKILL the worker once it is evaluating (set up, with a job) and is not worker
    ``after`` (one killed before, whose death the executor may not have seen yet)."""
    deadline = time.monotonic() + 120
    slot = executor._slots[0]  # type: ignore[attr-defined]
    while not (slot.ready and slot.job and not slot.worker.endswith(f":{after}")):
        assert time.monotonic() < deadline, "the job never started"
        assert executor.poll(timeout=0.05) == []
    time.sleep(0.3)  # into the build
    pid = int(slot.worker.rsplit(":", 1)[1])
    os.kill(pid, signal.SIGKILL)
    return pid


@pytest.mark.slow
def test_worker_killed_mid_evaluation_is_replaced_and_the_candidate_retried(started):
    executor, _ = started
    executor.submit(SKIP)
    pid = _kill_while_running(executor)
    [retried] = executor.poll(timeout=120)

    assert retried.ok, retried.error  # measured again by the replacement
    assert int(retried.worker.rsplit(":", 1)[1]) != pid


@pytest.mark.slow
def test_candidate_whose_workers_die_twice_fails_and_the_executor_goes_on(started):
    executor, _ = started
    if isinstance(executor, RayExecutor):
        pytest.skip("the retry bookkeeping is shared; the Ray kill path is tested once above")
    executor.submit(Strategy.from_dict({"layer1.2": {"skip": True}}))
    pid = 0
    for _ in range(1 + executor.max_retries):  # type: ignore[attr-defined]
        pid = _kill_while_running(executor, after=pid)
    [died] = executor.poll(timeout=120)
    after = _run(executor, Strategy.from_dict({"layer2.1": {"skip": True}}))

    assert died.status == "failed"
    assert died.error is not None
    assert died.error.startswith("WorkerDiedError:") and "(tried 2 times)" in died.error
    assert after.ok, after.error


@pytest.mark.slow
def test_poll_returns_nothing_when_its_timeout_ends_before_the_outcome(started):
    executor, _ = started
    executor.submit(Strategy.from_dict({"layer3.1": {"skip": True}}))

    early = executor.poll(timeout=0.05)  # an evaluation takes over a second
    pending_then = executor.pending
    [outcome] = executor.poll(timeout=None)

    assert early == []
    assert pending_then == 1
    assert outcome.ok, outcome.error
    assert executor.pending == 0


@pytest.mark.slow
def test_non_blocking_polls_collect_a_finished_outcome(started):
    """The driver polls with timeout 0 between PPO iterations: that must still read results."""
    executor, _ = started
    executor.submit(Strategy.from_dict({"layer3.2": {"skip": True}}))
    deadline = time.monotonic() + 120
    outcomes: list = []
    while not outcomes and time.monotonic() < deadline:
        outcomes = executor.poll(timeout=0)
        time.sleep(0.2)  # the driver's think() in between

    assert len(outcomes) == 1 and outcomes[0].ok, outcomes


@pytest.mark.slow
def test_local_worker_starts_its_next_job_without_waiting_for_a_poll(started):
    executor, _ = started
    if not isinstance(executor, LocalExecutor):
        pytest.skip("prefetch is a LocalExecutor feature")
    executor.submit(Strategy.from_dict({"layer1.0": {"skip": True}, "layer2.2": {"skip": True}}))
    executor.submit(Strategy.from_dict({"layer1.1": {"skip": True}, "layer2.2": {"skip": True}}))
    [first] = executor.poll(timeout=120)
    time.sleep(2 * first.eval_seconds + 1.0)  # the driver is busy: nobody polls

    second = executor.poll(timeout=0)

    assert first.ok and len(second) == 1 and second[0].ok
    assert executor.pending == 0


@pytest.mark.slow
def test_poll_with_nothing_pending_returns_nothing_at_once(started):
    executor, _ = started
    start = time.monotonic()

    outcomes = executor.poll(timeout=None)

    assert outcomes == []
    assert executor.pending == 0
    assert time.monotonic() - start < 0.5


@pytest.mark.parametrize("kind", KINDS)
def test_start_with_unknown_workload_raises_worker_start_error(kind, request, workload_cache):
    executor = _make(kind, EvalSpec(workload="no-such-workload", cache_dir=workload_cache), request)

    with pytest.raises(WorkerStartError, match=r"no-such-workload.*UnknownWorkloadError"):
        executor.start()
    executor.close()


@pytest.mark.slow
def test_local_worker_is_pinned_to_the_given_cpus(started):
    executor, _ = started
    if not isinstance(executor, LocalExecutor):
        pytest.skip("cpu pinning is a LocalExecutor option")

    pid = _pid(executor)

    assert os.sched_getaffinity(pid) == set(executor.cpus or ())


def test_local_worker_that_cannot_pin_itself_raises_at_start(workload_cache):
    spec = EvalSpec(workload="digits-resnet", cache_dir=workload_cache)
    executor = LocalExecutor(spec, cpus=[10_000])  # no such CPU: sched_setaffinity fails

    with pytest.raises(WorkerStartError, match="OSError"):
        executor.start()


def test_submit_before_start_raises(workload_cache):
    executor = LocalExecutor(EvalSpec(workload="digits-resnet", cache_dir=workload_cache))

    with pytest.raises(RuntimeError, match="start"):
        executor.submit(SKIP)


@pytest.mark.slow
def test_two_local_workers_evaluate_in_parallel_and_both_take_work(workload_cache: Path) -> None:
    spec = EvalSpec(workload="digits-resnet", cache_dir=workload_cache, eval=FAST)
    strategies = [
        Strategy.from_dict({f"layer{i}.{j}": {"skip": True}}) for i in (1, 2, 3) for j in (1, 2)
    ]
    with LocalExecutor(spec, timeout_s=120.0, workers=2) as executor:
        executor.start()
        assert executor.slots == 2
        for strategy in strategies:
            executor.submit(strategy)
        outcomes: list[Outcome] = []
        while len(outcomes) < len(strategies):
            outcomes += executor.poll(timeout=60)

    assert all(o.ok for o in outcomes), [o.error for o in outcomes]
    assert {o.strategy.key() for o in outcomes} == {s.key() for s in strategies}
    assert len({o.worker for o in outcomes}) == 2
    assert all(o.result and o.result.info["timing_s"] > 0 for o in outcomes)


def test_a_recovered_candidate_is_timed_beside_a_fresh_baseline(
    workload_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With recovery the worker times the baseline again next to the candidate (export's
    pairing); without it the setup's baseline serves, as measuring it would double the cost."""
    from dataclasses import replace

    import runners.evaluate as evaluate_module
    from runners.executor import Evaluator
    from runners.recovery import RecoveryConfig

    recovered = replace(FAST, build=replace(FAST.build, recovery=RecoveryConfig(steps=1)))
    spec = EvalSpec(workload="digits-resnet", cache_dir=workload_cache, eval=FAST)
    evaluator = Evaluator(spec)
    setup_baseline, _ = evaluator.setup()
    baselines: list[Strategy] = []
    measure = evaluate_module.measure

    def counting(subject, strategy, config, workdir=None):
        if strategy.is_identity:
            baselines.append(strategy)
        return measure(subject, strategy, config, workdir)

    monkeypatch.setattr(evaluate_module, "measure", counting)
    plain = Outcome.from_dict(evaluator.evaluate(SKIP.to_dict()))
    assert plain.ok, plain.error
    if plain.result.info.get("baseline_retimed"):  # the quick protocol's timing was in doubt
        assert len(baselines) == 1
    else:
        assert baselines == []
        assert plain.result.baseline_latency_ms == setup_baseline["latency"]["median_ms"]
    baselines.clear()

    evaluator.spec = replace(spec, eval=recovered)
    paired = Outcome.from_dict(evaluator.evaluate(SKIP.to_dict()))
    assert paired.ok, paired.error
    retimed = bool(paired.result.info.get("baseline_retimed"))
    assert len(baselines) == 1 + retimed and paired.result.info["paired_baseline"] is True
    assert paired.result.baseline_accuracy == plain.result.baseline_accuracy


def _timing(ms: float, weighted_flops: float, *, spread: float = 0.05) -> object:
    from runners.latency import LatencyStats
    from runners.result import Measurement

    stats = LatencyStats(
        median_ms=ms, p90_ms=ms, p10_ms=ms, mean_ms=ms, spread=spread, runs=50, rounds=5,
        stable=spread <= 0.5,
    )  # fmt: skip
    return Measurement(
        accuracy=95.0, latency=stats, flops=int(weighted_flops), weighted_flops=weighted_flops,
        params=1, size_bytes=1, info={},
    )  # fmt: skip


class _ScriptedTimings:
    """``runners.evaluate.measure`` replaced: the baseline's timings come from a script (a load
    spike, then a quiet machine), a candidate is always 1 ms at half the baseline's FLOPs."""

    def __init__(self, baseline_ms: list[float]) -> None:
        self.baseline_ms = list(baseline_ms)
        self.baselines = 0

    def __call__(self, subject, strategy, config, workdir=None):
        if strategy.is_identity:
            ms = self.baseline_ms[min(self.baselines, len(self.baseline_ms) - 1)]
            self.baselines += 1
            return _timing(ms, 2e6)
        return _timing(1.0, 1e6)


def test_a_worker_times_its_baseline_again_when_it_is_old(
    workload_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 18 (B.8): a baseline timed once per worker under a load spike inflated every
    speedup of that search. Past `BASELINE_MAX_AGE_S` the worker times it again."""
    import runners.evaluate as evaluate_module
    from runners.executor import BASELINE_MAX_AGE_S, Evaluator

    now = [0.0]
    scripted = _ScriptedTimings([2.0, 1.8])
    monkeypatch.setattr(evaluate_module, "measure", scripted)
    evaluator = Evaluator(
        EvalSpec(workload="digits-resnet", cache_dir=workload_cache, eval=FAST),
        clock=lambda: now[0],
    )
    evaluator.setup()
    now[0] = BASELINE_MAX_AGE_S / 2
    young = Outcome.from_dict(evaluator.evaluate(SKIP.to_dict()))
    assert young.ok, young.error
    assert scripted.baselines == 1 and young.result.speedup == pytest.approx(2.0)
    now[0] = BASELINE_MAX_AGE_S * 1.5
    old = Outcome.from_dict(evaluator.evaluate(SKIP.to_dict()))
    assert scripted.baselines == 2 and old.result.baseline_latency_ms == pytest.approx(1.8)


def test_a_speedup_above_the_flop_ideal_times_the_baseline_again_and_keeps_the_fresh_ratio(
    workload_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The spike case: the setup's baseline came out 6 ms where the machine gives 2 ms, so a
    candidate at half the FLOPs read 6x (realization 3). The worker re-times the baseline right
    after it and records the fresh 2x; a doubt that stays is on the result."""
    import runners.evaluate as evaluate_module
    from runners.executor import Evaluator

    scripted = _ScriptedTimings([6.0, 2.0])
    monkeypatch.setattr(evaluate_module, "measure", scripted)
    evaluator = Evaluator(
        EvalSpec(workload="digits-resnet", cache_dir=workload_cache, eval=FAST), clock=lambda: 0.0
    )
    evaluator.setup()
    outcome = Outcome.from_dict(evaluator.evaluate(SKIP.to_dict()))
    assert outcome.ok, outcome.error
    result = outcome.result
    assert scripted.baselines == 2
    assert result.speedup == pytest.approx(2.0) and result.realization == pytest.approx(1.0)
    assert result.info["baseline_retimed"] is True and result.latency_doubts == ()

    stuck = _ScriptedTimings([6.0])  # the machine stays slow for the baseline only
    monkeypatch.setattr(evaluate_module, "measure", stuck)
    evaluator.setup()
    doubted = Outcome.from_dict(evaluator.evaluate(SKIP.to_dict())).result
    assert doubted.speedup == pytest.approx(6.0)
    assert doubted.latency_doubts and "FLOP-ideal" in doubted.latency_doubts[0]
