"""An evaluation job: what a worker needs (`EvalSpec`) and what it hands back (`Outcome`).

Both are plain, picklable values: a worker process or Ray task rebuilds the live `Subject` from
an `EvalSpec` and returns an `Outcome`; only the driver turns outcomes into rewards and tracked
runs. Both round-trip through JSON: the spec is persisted (``search.json``, the parent MLflow
run) as a versioned ``{"_type": "layerpilot.EvalSpec", "_version": 1, ...}`` object so export,
report and resume read the setup instead of rebuilding it, and an outcome is a cache line.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from runners.evaluate import EvalConfig
from runners.result import EvalResult
from runners.serde import ConfigFormatError, from_json, to_json
from search_spaces import Strategy

if TYPE_CHECKING:
    from envs.workloads.base import Workload

Status = Literal["ok", "failed"]

EVAL_SPEC_TYPE = "layerpilot.EvalSpec"
EVAL_SPEC_VERSION = 2
"""The current ``_version`` of a persisted `EvalSpec` (`EvalSpec.from_dict` reads <= this)."""


class EvalSpecError(ValueError):
    """A persisted evaluation setup cannot be read (the message names the field or version)."""


@dataclass(frozen=True)
class EvalSpec:
    """Everything a worker needs to measure strategies of one workload."""

    workload: str | None = None
    """A built-in workload name (exclusive with ``model``)."""
    model: str | None = None
    """A bring-your-own ``module:function`` / ``file.py:function`` spec (a file: its absolute
    path, so the directory imports the same file from any working directory)."""
    model_sha256: str | None = None
    """sha256 of the model file when the search started: `load_workload` refuses to import a
    file that is missing or changed since (a search directory names code it will run)."""
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

    def check_model_file(self) -> None:
        """Refuse a pinned model file that is missing or whose content changed.

        Raises:
            EvalSpecError: The file is not where the search ran, or its sha256 differs.
        """
        from envs.workloads import file_digest, model_file

        if self.model is None or self.model_sha256 is None:
            return
        path = model_file(self.model)
        if path is None:
            return
        trust = (
            "importing it runs its code: check it, then name it with --model PATH:FUNCTION "
            "to use it"
        )
        if not path.is_file():
            raise EvalSpecError(f"the search's model file {path} is not there any more; {trust}")
        digest = file_digest(path)
        if digest != self.model_sha256:
            raise EvalSpecError(
                f"the search's model file {path} changed since the search ran (sha256 "
                f"{digest[:12]}… against {self.model_sha256[:12]}…); {trust}"
            )

    def with_model(self, spec: str) -> EvalSpec:
        """This spec with another model file, pinned as it is now (``export --model``)."""
        from envs.workloads import pin_model_spec

        model, digest = pin_model_spec(spec)
        return replace(self, model=model, model_sha256=digest)

    def load_workload(self) -> Workload:
        from envs.workloads import get_workload, load_workload_spec

        if self.model is not None:
            self.check_model_file()
            return load_workload_spec(self.model)
        assert self.workload is not None
        return get_workload(self.workload, seed=self.seed, cache_dir=self.cache_dir)

    def to_dict(self) -> dict[str, Any]:
        """The spec as versioned, JSON-ready data (`from_dict` reads it back).

        Example:
            >>> EvalSpec.from_dict(EvalSpec(workload="digits-resnet").to_dict()).name
            'digits-resnet'
        """
        return {
            "_type": EVAL_SPEC_TYPE,
            "_version": EVAL_SPEC_VERSION,
            "workload": self.workload,
            "model": self.model,
            "model_sha256": self.model_sha256,
            "seed": self.seed,
            "cache_dir": None if self.cache_dir is None else str(self.cache_dir),
            "eval": to_json(self.eval),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvalSpec:
        """The inverse of `to_dict`. Fields missing from ``eval`` take their defaults (a spec
        written before they existed).

        Raises:
            EvalSpecError: not an EvalSpec, an unsupported ``_version``, or a bad field (named
                by its dotted path, e.g. ``eval.latency.rel_tol``).
        """
        if not isinstance(data, Mapping):
            raise EvalSpecError(f"an EvalSpec must be a JSON object, got {type(data).__name__}")
        if data.get("_type") != EVAL_SPEC_TYPE:
            raise EvalSpecError(
                f"not an EvalSpec: _type is {data.get('_type')!r}, expected {EVAL_SPEC_TYPE!r}"
            )
        version = data.get("_version")
        if (
            not isinstance(version, int)
            or isinstance(version, bool)
            or not (1 <= version <= EVAL_SPEC_VERSION)
        ):
            raise EvalSpecError(
                f"EvalSpec _version {version!r} is not supported (this layerpilot reads versions "
                f"1..{EVAL_SPEC_VERSION}); upgrade layerpilot to read it"
            )
        fields = {"workload", "model", "model_sha256", "seed", "cache_dir", "eval"}
        unknown = sorted(set(data) - fields - {"_type", "_version"})
        if unknown:
            raise EvalSpecError(f"EvalSpec has unknown field(s) {', '.join(unknown)}")
        for name in ("workload", "model", "model_sha256", "cache_dir"):
            value = data.get(name)
            if value is not None and not isinstance(value, str):
                raise EvalSpecError(f"EvalSpec field {name!r} must be a string, got {value!r}")
        seed = data.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise EvalSpecError(f"EvalSpec field 'seed' must be an integer, got {seed!r}")
        try:
            config = from_json(EvalConfig, data.get("eval", {}), "eval")
        except ConfigFormatError as exc:
            raise EvalSpecError(f"EvalSpec field {exc.path!r}: {exc.problem}") from exc
        cache_dir = data.get("cache_dir")
        try:
            return cls(
                workload=data.get("workload"),
                model=data.get("model"),
                model_sha256=data.get("model_sha256"),
                seed=seed,
                cache_dir=None if cache_dir is None else Path(cache_dir),
                eval=config,
            )
        except ValueError as exc:
            raise EvalSpecError(f"EvalSpec: {exc}") from exc

    @property
    def fidelity(self) -> str:
        """The recovery level candidates are built with (`runners.recovery.fidelity_name`)."""
        from runners.recovery import fidelity_name

        return fidelity_name(self.eval.build.recovery)

    def at(self, fidelity: str) -> EvalSpec:
        """This spec with candidates recovered at ``fidelity``, a ``RECOVERY_PRESETS`` name (the
        spec itself when it already is at that level).

        Example:
            >>> EvalSpec(workload="digits-resnet").at("full").eval.build.recovery.steps
            400
        """
        from runners.recovery import recovery_preset

        if fidelity == self.fidelity:
            return self
        build = replace(self.eval.build, recovery=recovery_preset(fidelity))
        return replace(self, eval=replace(self.eval, build=build))

    def cache_scope(self) -> dict[str, Any]:
        """What, besides the strategy, decides a measurement (the candidate cache's key)."""
        from runners.quantize import int8_scope

        return {
            "workload": self.name,
            "seed": self.seed,
            "runtime": self.eval.runtime,
            "threads": self.eval.threads,
            "batch_size": self.eval.latency.batch_size,
            "build": self.eval.build.scope(),  # BN re-estimation and recovery change accuracy
            "latency": _latency_scope(self.eval.latency)  # the protocol changes the figures
            if self.eval.time_latency
            else "not timed",
            **int8_scope(self.eval.runtime),
        }


LATENCY_KEY_SINCE: dict[str, object] = {"max_spread": 0.5}
"""Protocol fields added after caches were written that change no timed figure (``max_spread``
only decides the ``stable`` flag): left out of the cache key at these defaults, so a cache
written before them still matches."""


def _latency_scope(latency: Any) -> dict[str, Any]:
    scope = asdict(latency)
    for name, default in LATENCY_KEY_SINCE.items():
        if scope.get(name) == default:
            del scope[name]
    return scope


@dataclass(frozen=True)
class Outcome:
    """The frozen result of evaluating one strategy: a measurement or the error it raised."""

    strategy: Strategy
    status: Status
    result: EvalResult | None = None
    """The measured result when ``status == "ok"`` (a mapping given here, e.g. an old record's
    ``to_dict()``, is read with `EvalResult.from_dict`; a missing ``strategy`` is this one's)."""
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
    fidelity: str = "none"
    """The recovery level the candidate was built with before it was measured (a
    ``runners.recovery.RECOVERY_PRESETS`` name: ``none``, ``short``, ``full``; an outcome
    recorded before fidelities existed reads as ``none``)."""

    def __post_init__(self) -> None:
        if isinstance(self.result, Mapping):  # the JSON edge: pipes, caches, older records
            data = {"strategy": self.strategy.to_dict(), **self.result}
            object.__setattr__(self, "result", EvalResult.from_dict(data))
        if self.status == "ok" and self.result is None:
            raise ValueError("an ok Outcome needs a result")
        if self.status == "failed" and not self.error:
            raise ValueError("a failed Outcome needs an error")

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def metric(self, name: str) -> float:
        """A numeric field or action metric of the result by name (NaN when failed or missing).

        For callers that pick a column by name; code that knows the field reads
        ``outcome.result.<field>``.
        """
        return math.nan if self.result is None else self.result.value(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy.to_dict(),
            "status": self.status,
            "result": None if self.result is None else self.result.to_dict(),
            "error": self.error,
            "eval_seconds": self.eval_seconds,
            "worker": self.worker,
            "node": self.node,
            "attempts": self.attempts,
            "fidelity": self.fidelity,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Outcome:
        return cls(
            strategy=Strategy.from_dict(data["strategy"]),
            status=data["status"],
            result=_result(data.get("result"), data["strategy"]),
            error=data.get("error"),
            eval_seconds=float(data.get("eval_seconds", 0.0)),
            worker=data.get("worker", ""),
            node=data.get("node", ""),
            attempts=int(data.get("attempts", 1)),
            fidelity=str(data.get("fidelity", "none")),
        )


def _result(data: Mapping[str, Any] | None, strategy: Any) -> EvalResult | None:
    if data is None:
        return None
    return EvalResult.from_dict({"strategy": strategy, **data})
