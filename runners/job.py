"""An evaluation job: what a worker needs (`EvalSpec`) and what it hands back (`Outcome`).

Both are plain, picklable values: a worker process or Ray task rebuilds the live `Subject` from
an `EvalSpec` and returns an `Outcome`; only the driver turns outcomes into rewards and tracked
runs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from runners.evaluate import EvalConfig
from search_spaces import Strategy

if TYPE_CHECKING:
    from envs.workloads.base import Workload

Status = Literal["ok", "failed"]


@dataclass(frozen=True)
class EvalSpec:
    """Everything a worker needs to measure strategies of one workload."""

    workload: str | None = None
    """A built-in workload name (exclusive with ``model``)."""
    model: str | None = None
    """A bring-your-own ``module:function`` / ``file.py:function`` spec."""
    seed: int = 0
    """Built-in workload training seed."""
    cache_dir: Path | None = None
    """Workload cache root (default ``$LAYERPILOT_CACHE`` or ``~/.cache/layerpilot``)."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """How each candidate is built and measured."""

    def __post_init__(self) -> None:
        if (self.workload is None) == (self.model is None):
            raise ValueError("EvalSpec needs exactly one of workload= or model=")

    @property
    def name(self) -> str:
        return self.workload or str(self.model)

    def load_workload(self) -> Workload:
        from envs.workloads import get_workload, load_workload_spec

        if self.model is not None:
            return load_workload_spec(self.model)
        assert self.workload is not None
        return get_workload(self.workload, seed=self.seed, cache_dir=self.cache_dir)

    def cache_scope(self) -> dict[str, Any]:
        """What, besides the strategy, decides a measurement (the candidate cache's key)."""
        return {
            "workload": self.name,
            "seed": self.seed,
            "runtime": self.eval.runtime,
            "threads": self.eval.threads,
            "batch_size": self.eval.latency.batch_size,
            "build": self.eval.build.scope(),  # BN re-estimation and recovery change accuracy
            "latency": asdict(self.eval.latency)  # the protocol changes what is reported
            if self.eval.time_latency
            else "not timed",
        }


@dataclass(frozen=True)
class Outcome:
    """The frozen result of evaluating one strategy: a measurement or the error it raised."""

    strategy: Strategy
    status: Status
    result: dict[str, Any] | None = None
    """``EvalResult.to_dict()`` when ``status == "ok"``."""
    error: str | None = None
    """``"ExceptionType: message"`` when ``status == "failed"`` (timeouts, crashes, NaN)."""
    eval_seconds: float = 0.0
    """Wall time of the evaluation on the worker (build + compile + accuracy + timing)."""
    worker: str = ""
    """Where it ran (``host:pid``)."""
    node: str = ""
    """The Ray node id it ran on (empty outside Ray)."""
    attempts: int = 1
    """Workers it was sent to (more than 1 when a worker died under it and it was retried)."""

    def __post_init__(self) -> None:
        if self.status == "ok" and self.result is None:
            raise ValueError("an ok Outcome needs a result")
        if self.status == "failed" and not self.error:
            raise ValueError("a failed Outcome needs an error")

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def metric(self, name: str) -> float:
        """A numeric field of the result (NaN when failed or missing)."""
        if self.result is None:
            return math.nan
        value = self.result.get(name)
        return float(value) if isinstance(value, int | float) else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy.to_dict(),
            "status": self.status,
            "result": self.result,
            "error": self.error,
            "eval_seconds": self.eval_seconds,
            "worker": self.worker,
            "node": self.node,
            "attempts": self.attempts,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Outcome:
        return cls(
            strategy=Strategy.from_dict(data["strategy"]),
            status=data["status"],
            result=data.get("result"),
            error=data.get("error"),
            eval_seconds=float(data.get("eval_seconds", 0.0)),
            worker=data.get("worker", ""),
            node=data.get("node", ""),
            attempts=int(data.get("attempts", 1)),
        )
