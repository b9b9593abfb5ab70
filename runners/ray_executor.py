"""`RayExecutor`: evaluator actors on every Ray node, so a cluster measures candidates in
parallel while no two of our measurements ever overlap on one machine (the timed sections of the
actors of one host take turns under `runners.measure_lock`). See `runners.executor` for the
contract.

Each actor reserves ``cpus_per_worker`` CPUs, and one GPU for a GPU runtime (``num_gpus=1``), so
Ray never packs more actors on a node than it has room for. An actor whose node dies is not
restarted there: the node's slots retire, the candidate it was running is retried on another
node (``max_retries``), and the search goes on with the nodes left.
"""

from __future__ import annotations

import re
from typing import Any

from runners import GPU_RUNTIMES
from runners.executor import Evaluator, WorkerStartError, _Event, _Job, _Slot, _SlotExecutor
from runners.job import EvalSpec


class RayExecutor(_SlotExecutor):
    """``workers`` evaluator actors per alive Ray node, each evaluating its candidates serially.

    The driver must have called ``ray.init`` already; ``slots`` is the number of actors. Nodes
    that join after `start` are not used.

    Args:
        spec: What to evaluate and how.
        timeout_s: Per-candidate limit (and start-up limit); past it the actor is killed, the
            candidate fails with a ``TimeoutError`` and a new actor starts on the same node.
        cpus_per_worker: CPUs each actor reserves (nodes with fewer get no actor).
        workers: Actors per node (as many as the node's CPUs and GPUs allow, at most this).
    """

    def __init__(
        self,
        spec: EvalSpec,
        timeout_s: float = 300.0,
        cpus_per_worker: float = 1.0,
        workers: int = 1,
    ) -> None:
        super().__init__(spec, timeout_s)
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.cpus_per_worker = cpus_per_worker
        self.gpus_per_worker = 1.0 if spec.eval.runtime in GPU_RUNTIMES else 0.0
        self.workers = workers
        self._actor_cls: Any = None

    def start(self) -> dict[str, Any]:
        """Start one actor per node and wait for their baselines; returns the first one's."""
        import ray

        if not ray.is_initialized():
            raise RuntimeError("RayExecutor needs ray.init() to have been called by the driver")
        slots = []
        for node in ray.nodes():
            if not node["Alive"]:
                continue
            room = int(node["Resources"].get("CPU", 0) // self.cpus_per_worker)
            if self.gpus_per_worker:
                room = min(room, int(node["Resources"].get("GPU", 0)))
            slots += [_Slot(node=node["NodeID"]) for _ in range(min(room, self.workers))]
        if not slots:
            need = f"{self.cpus_per_worker:g} CPUs" + (" and a GPU" if self.gpus_per_worker else "")
            raise WorkerStartError(f"no alive Ray node has {need}")
        return self._start_slots(slots)

    @property
    def nodes(self) -> list[str]:
        """Ids of the nodes that hold at least one working slot."""
        return sorted({s.node for s in self._slots if not s.retired})

    def _spawn(self, slot: _Slot) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        if self._actor_cls is None:
            self._actor_cls = ray.remote(max_restarts=0, max_task_retries=0)(Evaluator)
        slot.handle = self._actor_cls.options(
            num_cpus=self.cpus_per_worker,
            num_gpus=self.gpus_per_worker,
            scheduling_strategy=NodeAffinitySchedulingStrategy(slot.node, soft=False),
        ).remote(self.spec)
        slot.ref = slot.handle.setup.remote()

    def _send(self, slot: _Slot, job: _Job) -> None:
        slot.ref = slot.handle.evaluate.remote(job.strategy.to_dict(), job.fidelity)

    def _kill(self, slot: _Slot, graceful: bool = False) -> None:
        import ray

        ray.kill(slot.handle, no_restart=True)

    def _retire(self, slot: _Slot) -> bool:
        import ray

        return not any(n["NodeID"] == slot.node and n["Alive"] for n in ray.nodes())

    def _wait(self, timeout: float | None) -> list[_Event]:
        import ray
        from ray.exceptions import RayActorError

        by_ref = {s.ref: s for s in self._slots if s.ref is not None}
        if not by_ref or not ray.wait(list(by_ref), num_returns=1, timeout=timeout)[0]:
            return []
        events: list[_Event] = []
        for ref in ray.wait(list(by_ref), num_returns=len(by_ref), timeout=0)[0]:
            slot = by_ref[ref]
            slot.ref = None
            try:
                payload = ray.get(ref)
            except RayActorError as exc:
                events.append((slot, "died", _actor_death(exc)))
            except Exception as exc:  # setup raised (evaluate never does)
                cause = getattr(exc, "cause", None) or exc
                events.append((slot, "start_failed", f"{type(cause).__name__}: {cause}"))
            else:
                events.append((slot, "ready" if not slot.ready else "outcome", payload))
        return events


def _actor_death(exc: BaseException) -> str:
    """Ray's death report, less its boilerplate (Ray does not say which signal killed it)."""
    text = str(exc).strip()
    pid = re.search(r"^\s*pid: (\d+)", text, re.MULTILINE)
    detail = text.splitlines()[-1].split(" Some common causes")[0] if text else type(exc).__name__
    return f"evaluator actor{f' (pid {pid[1]})' if pid else ''} died: {detail}"
