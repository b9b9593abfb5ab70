"""Persistent worker subprocesses on this machine (`LocalExecutor`).

See `runners.executor` for what every executor guarantees (one baseline per worker, failures as
outcomes, a dead worker replaced and its candidate retried once).
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Any

from runners.executor import Evaluator, _Event, _Job, _Slot, _SlotExecutor
from runners.job import EvalSpec


def _worker_main(
    spec: EvalSpec, conn: Any, cpus: list[int] | None, measure_cpus: list[int] | None
) -> None:
    """The local worker: set up, report the baseline, then evaluate until told to stop."""
    from runners.measure_lock import set_measure_cpus

    # Ctrl-C in a terminal reaches the whole process group: the driver decides when to stop
    # (it finishes the step it is in, then closes the executor, which kills this process).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        if cpus is not None:
            os.sched_setaffinity(0, cpus)
        set_measure_cpus(measure_cpus)
        evaluator = Evaluator(spec)
        conn.send(("ready", evaluator.setup()))
    except Exception as exc:
        conn.send(("start_failed", f"{type(exc).__name__}: {exc}"))
        return
    while (job := conn.recv()) is not None:
        strategy, fidelity = job
        conn.send(("outcome", evaluator.evaluate(strategy, fidelity)))


class LocalExecutor(_SlotExecutor):
    """Persistent worker subprocesses on this machine, each evaluating one candidate at a time
    (``slots == workers``).

    Args:
        spec: What to evaluate and how.
        timeout_s: Per-candidate limit (and start-up limit); past it the worker is killed, the
            candidate fails with a ``TimeoutError`` and a fresh worker takes the next one.
        cpus: Pin the workers to these CPU ids (``os.sched_setaffinity``).
        workers: Worker processes. Each takes the host's measurement lock to time.
        measure_cpus: Cores a worker moves onto while it times (`runners.measure_lock`).
    """

    def __init__(
        self,
        spec: EvalSpec,
        timeout_s: float = 300.0,
        cpus: list[int] | None = None,
        workers: int = 1,
        measure_cpus: list[int] | None = None,
    ) -> None:
        super().__init__(spec, timeout_s)
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.cpus = cpus
        self.measure_cpus = measure_cpus
        self.workers = workers
        self.prefetch = workers == 1  # with several, a queued job goes to whichever is free

    def start(self) -> dict[str, Any]:
        """Start the workers and wait for their baselines (`WorkerStartError` if one cannot);
        returns the first worker's."""
        return self._start_slots([_Slot() for _ in range(self.workers)])

    def _spawn(self, slot: _Slot) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        args = (self.spec, child, self.cpus, self.measure_cpus)
        process = ctx.Process(target=_worker_main, args=args, daemon=True, name="layerpilot-eval")
        process.start()
        child.close()
        slot.handle = (process, parent)

    def _send(self, slot: _Slot, job: _Job) -> None:
        with contextlib.suppress(OSError):  # it died: `_wait` reports that, and the job is retried
            slot.handle[1].send((job.strategy.to_dict(), job.fidelity))

    def _kill(self, slot: _Slot, graceful: bool = False) -> None:
        process, conn = slot.handle
        if graceful and process.is_alive():
            with contextlib.suppress(OSError):  # an idle worker exits cleanly
                conn.send(None)
                process.join(timeout=5)
        if process.is_alive():
            process.kill()
        process.join()
        conn.close()

    def _wait(self, timeout: float | None) -> list[_Event]:
        from multiprocessing.connection import wait

        live = [s for s in self._slots if s.handle is not None]
        if not live:
            return []
        wait([w for s in live for w in (s.handle[1], s.handle[0].sentinel)], timeout)
        events: list[_Event] = []
        for slot in live:
            process, conn = slot.handle
            with contextlib.suppress(EOFError, OSError):  # EOF: it died without a word
                if conn.poll():
                    kind, payload = conn.recv()
                    events.append((slot, kind, payload))
                    continue
            if not process.is_alive():
                process.join()
                code = _describe(process.exitcode)
                events.append((slot, "died", f"evaluation worker exited with {code}"))
        return events


def _describe(code: int | None) -> str:
    if code is not None and code < 0 and -code in signal.valid_signals():
        return f"code {code} ({signal.Signals(-code).name})"
    return f"code {code}"
