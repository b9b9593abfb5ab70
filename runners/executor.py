"""Where candidates are evaluated: one local worker process, or one Ray actor per node
(`runners.ray_executor`).

Both executors keep persistent workers. A worker prepares the `Subject` once, measures its own
baseline and keeps it fresh (`Evaluator`: a speedup compares two latencies taken on the same
machine moments apart), then evaluates one strategy at a time. Several workers may share a
machine (``workers`` per executor or per Ray node): they build and score candidates in parallel,
and their timed sections take turns under the host's measurement lock (`runners.measure_lock`),
so no two of our latency measurements ever overlap on one machine. Whatever goes wrong in an
evaluation (a build error, NaN outputs, a timeout, a segfault) comes back as a failed `Outcome`.
A worker that hung or died is replaced and the search goes on; the candidate a worker died on is
retried once on another worker (``max_retries``) before it is recorded as failed.

Strategies and outcomes cross process boundaries as their JSON dicts; the driver reads each
back into a typed `Outcome` (its ``result`` an ``EvalResult``) as it arrives.

The local executor (worker subprocesses) is in `runners.local_executor`, the Ray one in
`runners.ray_executor`; both are built on the slot bookkeeping here.

Long module: the worker side (`Evaluator`) and the driver side (the slot bookkeeping both
executors share) speak one protocol, kept in one place.

Example:
    >>> from runners.local_executor import LocalExecutor
    >>> with LocalExecutor(EvalSpec(workload="digits-resnet")) as executor:
    ...     baseline = executor.start()
    ...     executor.submit(Strategy.from_dict({"layer1.0": {"skip": True}}))
    ...     [outcome] = executor.poll(timeout=None)
"""

from __future__ import annotations

import collections
import math
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from runners.evaluate import BaselineError
from runners.job import EvalSpec, Outcome
from search_spaces import Strategy


class WorkerStartError(RuntimeError):
    """An evaluation worker could not prepare the workload or measure its baseline."""


class Executor(Protocol):
    """Evaluates strategies asynchronously: submit, then poll for outcomes."""

    @property
    def slots(self) -> int:
        """Candidates that can be in flight at once."""

    def start(self) -> dict[str, Any]:
        """Start the workers; the first worker's baseline as `Measurement.to_dict`."""

    def submit(
        self, strategy: Strategy, timeout_s: float | None = None, fidelity: str | None = None
    ) -> None:
        """Queue ``strategy`` (``timeout_s`` overrides the executor's per-candidate limit;
        ``fidelity``, a ``RECOVERY_PRESETS`` name, the recovery it is built with: default the
        spec's own)."""

    def poll(self, timeout: float | None = None) -> list[Outcome]:
        """Outcomes finished since the last poll; waits up to ``timeout`` s for one if any
        are pending (None: until one arrives)."""

    @property
    def pending(self) -> int:
        """Submitted strategies whose outcome has not been returned by `poll` yet."""

    def close(self) -> None:
        """Stop the workers (idempotent)."""

    def __enter__(self) -> Executor: ...

    def __exit__(self, *exc: object) -> None: ...


BASELINE_MAX_AGE_S = 60.0
"""A worker times the unchanged model again when its last timing is older than this, so a
speedup never divides by a baseline taken minutes earlier under another load."""


class Evaluator:
    """The worker side: one prepared subject, a baseline kept fresh, any number of strategies.

    The baseline is timed at start-up, again before a candidate when it is older than
    `BASELINE_MAX_AGE_S` or the candidate is recovered (tens of seconds: its ratio then divides
    two timings a moment apart, as export's does), and once more right after a candidate whose
    ratio puts the baseline in doubt (`EvalResult.baseline_in_doubt`: a speedup above the
    FLOP-ideal, an unstable baseline). The result then carries the fresh ratio, and
    ``info["baseline_retimed"]``; doubts that remain are in its ``latency_doubts``.
    """

    def __init__(self, spec: EvalSpec, clock: Callable[[], float] = time.monotonic) -> None:
        self.spec = spec
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.node = _ray_node_id()
        self._clock = clock
        self._subject: Any = None
        self._baseline: Any = None
        self._baseline_at = -math.inf

    def setup(self) -> tuple[dict[str, Any], str]:
        """Prepare the subject and measure the baseline: (`Measurement.to_dict`, ``host:pid``)."""
        import torch

        from runners.build import Subject

        torch.set_num_threads(self.spec.eval.threads)
        self._subject = Subject.prepare(self.spec.load_workload())
        self._time_baseline(self.spec)
        return self._baseline.to_dict(), self.name

    def _time_baseline(self, spec: EvalSpec) -> None:
        from runners.evaluate import measure

        self._baseline = measure(self._subject, Strategy(), spec.eval)
        self._baseline_at = self._clock()

    def evaluate(self, strategy: dict[str, Any], fidelity: str | None = None) -> dict[str, Any]:
        """``Outcome.to_dict()`` of one strategy, built at ``fidelity`` (a recovery preset name;
        default the spec's own recovery); never raises."""
        from runners.evaluate import check_evaluable, measure
        from runners.result import EvalResult

        start = time.perf_counter()
        outcome: dict[str, Any] = {"strategy": strategy, "worker": self.name, "node": self.node}
        try:
            spec = self.spec if fidelity is None else self.spec.at(fidelity)
            outcome["fidelity"] = spec.fidelity
            parsed = Strategy.from_dict(strategy)
            check_evaluable(self._subject, parsed, spec.eval)
            paired = spec.eval.build.recovery.steps > 0
            if paired or self._clock() - self._baseline_at > BASELINE_MAX_AGE_S:
                self._time_baseline(spec)
            candidate = measure(self._subject, parsed, spec.eval)
            workload = self._subject.workload

            def result_of() -> EvalResult:
                return EvalResult.of(
                    workload.name,
                    parsed,
                    spec.eval.runtime,
                    candidate,
                    self._baseline,
                    workload.higher_is_better,
                )

            result = result_of()
            if result.baseline_in_doubt:
                self._time_baseline(spec)
                result = result_of()
                result.info["baseline_retimed"] = True
            if paired:
                result.info["paired_baseline"] = True
            outcome.update(status="ok", result=result.to_dict())
        except Exception as exc:
            outcome.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        outcome["eval_seconds"] = time.perf_counter() - start
        return outcome


def _ray_node_id() -> str:
    """The Ray node this process runs on, when it is a Ray worker ("" otherwise)."""
    if "ray" not in sys.modules:  # a local worker: importing Ray would cost ~1 s for nothing
        return ""
    import ray

    return str(ray.get_runtime_context().get_node_id()) if ray.is_initialized() else ""


@dataclass
class _Job:
    strategy: Strategy
    timeout_s: float
    fidelity: str
    """The recovery level it is built with (a ``RECOVERY_PRESETS`` name)."""
    attempts: int = 0
    """Workers that died while running it."""


@dataclass
class _Slot:
    """One worker and what it is doing."""

    handle: Any = None
    """The live worker (process + pipe, or actor); None when there is none."""
    ready: bool = False
    """Set up and waiting for work (False while starting)."""
    job: _Job | None = None
    next_job: _Job | None = None
    """Prefetch: already sent, waiting in the worker's pipe behind ``job``."""
    deadline: float = math.inf
    """When the job in flight (or the start-up) runs out of time."""
    failed_starts: int = 0
    """Start-ups that failed since this slot's worker was last ready."""
    baseline: dict[str, Any] | None = None
    worker: str = ""
    """``host:pid`` of the worker."""
    ref: Any = None
    """Ray: the call in flight (setup or evaluate)."""
    node: str = ""
    """Ray: the node the slot's actors are pinned to."""
    retired: bool = False
    """The slot's machine is gone (a dead Ray node): never started again."""


#: What a worker reports: (slot, "ready" | "start_failed" | "outcome" | "died", payload).
_Event = tuple[_Slot, str, Any]
_E = TypeVar("_E", bound="_SlotExecutor")


class _SlotExecutor:
    """The bookkeeping both executors share: a queue, slots, deadlines and restarts.

    An executor supplies four hooks: `_spawn` a worker in the background, `_send` it a job,
    `_kill` it, and `_wait` up to a timeout for what its workers report (`_Event`).
    """

    prefetch = False
    """Send each worker its next job while it runs the current one, so it never idles waiting
    for the driver to poll (the driver may be busy training between polls)."""

    max_retries = 1
    """Times a candidate whose worker died under it is run again on another worker."""

    def __init__(self, spec: EvalSpec, timeout_s: float) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.spec = spec
        self.timeout_s = timeout_s
        self._slots: list[_Slot] = []
        self._queue: collections.deque[_Job] = collections.deque()
        self._done: list[Outcome] = []
        self._started = False

    def _spawn(self, slot: _Slot) -> None:
        raise NotImplementedError

    def _send(self, slot: _Slot, job: _Job) -> None:
        raise NotImplementedError

    def _kill(self, slot: _Slot, graceful: bool = False) -> None:
        raise NotImplementedError

    def _wait(self, timeout: float | None) -> list[_Event]:
        raise NotImplementedError

    @property
    def slots(self) -> int:
        return len(self._slots)

    @property
    def pending(self) -> int:
        running = sum((s.job is not None) + (s.next_job is not None) for s in self._slots)
        return len(self._queue) + running + len(self._done)

    def submit(
        self, strategy: Strategy, timeout_s: float | None = None, fidelity: str | None = None
    ) -> None:
        if not self._started:
            raise RuntimeError("call start() before submit()")
        level = self.spec.at(fidelity).fidelity if fidelity is not None else self.spec.fidelity
        limit = self.timeout_s if timeout_s is None else timeout_s
        self._queue.append(_Job(strategy, limit, level))
        self._dispatch()

    def poll(self, timeout: float | None = None) -> list[Outcome]:
        end = math.inf if timeout is None else time.monotonic() + timeout
        while not self._done and self.pending:
            self._dispatch()
            self._expire()
            if self._done:
                break
            # always look once (timeout 0 is a non-blocking check), then stop at the deadline
            self._handle(self._wait(_until(min(end, *(s.deadline for s in self._slots)))))
            if time.monotonic() >= end:
                break
        self._dispatch()
        done, self._done = self._done, []
        return done

    def close(self) -> None:
        for slot in self._slots:
            if slot.handle is not None:
                self._kill(slot, graceful=slot.ready and slot.job is None)
                slot.handle = None
        self._started = False

    def __enter__(self: _E) -> _E:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start_slots(self, slots: list[_Slot]) -> dict[str, Any]:
        self._slots = slots
        for slot in self._slots:
            self._restart(slot)
        while not all(s.ready for s in self._slots):
            self._expire()
            self._handle(self._wait(_until(min(s.deadline for s in self._slots))))
        self._started = True
        assert self._slots[0].baseline is not None
        return self._slots[0].baseline

    def _restart(self, slot: _Slot) -> None:
        if slot.handle is not None:
            self._kill(slot)
        slot.handle, slot.ready, slot.ref, slot.worker = None, False, None, ""
        slot.deadline = math.inf
        if self._retire(slot):
            slot.retired = True
            self._fail_if_no_workers()
            return
        slot.deadline = time.monotonic() + self.timeout_s
        self._spawn(slot)

    def _retire(self, slot: _Slot) -> bool:
        """Whether the slot's machine is gone for good (Ray: its node died)."""
        return False

    def _fail_if_no_workers(self) -> None:
        if self._slots and all(s.retired for s in self._slots):
            while self._queue:
                self._fail(self._queue.popleft(), "WorkerDiedError: no worker left", 0.0, "")

    def _handle(self, events: list[_Event]) -> None:
        for slot, kind, payload in events:
            if kind == "ready":
                slot.ready, slot.deadline, slot.failed_starts = True, math.inf, 0
                slot.baseline, slot.worker = payload
            elif kind == "outcome":
                job, slot.job, slot.deadline = slot.job, None, math.inf
                if job is not None:
                    data = {
                        **payload,
                        "strategy": job.strategy.to_dict(),
                        "attempts": job.attempts + 1,
                        "fidelity": job.fidelity,
                    }
                    self._done.append(Outcome.from_dict(data))
                if slot.next_job is not None:  # the worker has already started it
                    slot.job, slot.next_job = slot.next_job, None
                    slot.deadline = time.monotonic() + slot.job.timeout_s
            elif kind == "died" and slot.ready:
                job, slot.job = slot.job, None
                self._requeue_next(slot)
                if job is not None and job.attempts < self.max_retries:
                    job.attempts += 1  # retried first, on the next free worker
                    self._queue.appendleft(job)
                elif job is not None:
                    error = f"WorkerDiedError: {payload} (tried {job.attempts + 1} times)"
                    self._fail(job, error, 0.0, slot.worker)
                self._restart(slot)
            else:
                error = f"WorkerDiedError: {payload}" if kind == "died" else payload
                self._start_failed(slot, error)

    def _start_failed(self, slot: _Slot, error: str) -> None:
        if slot.handle is not None:
            self._kill(slot)
        slot.handle, slot.ready, slot.ref, slot.deadline = None, False, None, math.inf
        slot.failed_starts += 1
        if not self._started:
            self.close()
            failure = WorkerStartError(f"evaluation worker for {self.spec.name} failed: {error}")
            prefix = f"{BaselineError.__name__}: "
            if error.startswith(prefix):  # the model's fault, not the worker's: say so plainly
                raise BaselineError(error.removeprefix(prefix)) from failure
            raise failure
        # A replacement failed: give its error to one queued candidate, so that a worker that
        # can never start again fails each candidate once instead of restarting forever.
        if self._queue and not any(s.handle is not None for s in self._slots):
            self._fail(self._queue.popleft(), f"WorkerStartError: {error}", 0.0, "")

    def _requeue_next(self, slot: _Slot) -> None:
        """A prefetched job never started on a worker that is going away: queue it first."""
        if slot.next_job is not None:
            self._queue.appendleft(slot.next_job)
            slot.next_job = None

    def _fail(self, job: _Job, error: str, seconds: float, worker: str) -> None:
        outcome = Outcome(
            job.strategy,
            "failed",
            error=error,
            eval_seconds=seconds,
            worker=worker,
            attempts=job.attempts + 1,
            fidelity=job.fidelity,
        )
        self._done.append(outcome)

    def _expire(self) -> None:
        now = time.monotonic()
        for slot in self._slots:
            if now < slot.deadline:
                continue
            if not slot.ready:
                self._start_failed(slot, f"TimeoutError: start-up exceeded {self.timeout_s:g} s")
            elif slot.job is not None:
                job, slot.job = slot.job, None
                self._requeue_next(slot)
                error = f"TimeoutError: evaluation exceeded {job.timeout_s:g} s"
                self._fail(job, error, job.timeout_s, slot.worker)
                self._restart(slot)

    def _dispatch(self) -> None:
        alive = sum(s.handle is not None for s in self._slots)
        for slot in self._slots:
            if not self._queue:
                return
            if slot.retired:
                continue
            # A slot whose replacement failed to start stays empty while others can work.
            if slot.handle is None and (slot.failed_starts == 0 or not alive):
                self._restart(slot)
                alive += 1
            elif slot.ready and slot.job is None:
                slot.job = self._queue.popleft()
                slot.deadline = time.monotonic() + slot.job.timeout_s
                self._send(slot, slot.job)
            if self.prefetch and self._queue and slot.job is not None and slot.next_job is None:
                slot.next_job = self._queue.popleft()
                self._send(slot, slot.next_job)


def _until(deadline: float) -> float | None:
    return None if deadline == math.inf else max(0.0, deadline - time.monotonic())
