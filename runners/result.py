"""The one schema of a measured candidate: `Measurement` and `EvalResult`.

`Measurement` is what one model measured on one runtime. `EvalResult` is a candidate's
measurement set against the unchanged model's, flattened into the fields every reader uses: the
worker builds it (`EvalResult.of`), the cache and ``candidates.jsonl`` hold its ``to_dict()``,
MLflow holds its ``metrics()`` and its full ``to_dict()`` (``result.json``), and the reward,
records, report and export read its fields. ``from_dict`` reads every shape it was ever written
in, so old caches and search directories keep loading.

Example:
    >>> result = EvalResult.of("digits-resnet", strategy, "onnxruntime-cpu", candidate, baseline)
    >>> EvalResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result
    True

Long module: `Measurement` and `EvalResult` are the one typed schema of a measured candidate,
with every older shape it reads back and the doubts it can raise about its own speedup.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, Literal

from runners.latency import LatencyStats
from search_spaces import Strategy

SpeedupSource = Literal["latency", "flops"]

CORE_METRICS: tuple[str, ...] = (
    "accuracy",
    "accuracy_drop",
    "latency_ms",
    "latency_p90_ms",
    "speedup",
    "ideal_speedup",
    "flops",
    "params",
    "size_bytes",
)
"""Fields every candidate run logs as metrics (`EvalResult.metrics`; actions add theirs)."""

MAX_REALIZATION = 1.1
"""A measured speedup more than this multiple of the FLOP-ideal one is flagged
(`EvalResult.latency_doubts`): int8 is costed at a quarter of a fp32 FLOP, so a real runtime
stays below 1 except by timing noise (the protocol's 2 % on each side) or a slow baseline."""
_BOOL = frozenset({"latency_stable", "baseline_latency_stable"})

LEGACY_KEYS: dict[str, str] = {"latency_median_ms": "latency_input_median_ms"}
"""Action-metric keys of records written before issue 15 -> their name now. A dynamic-skip
record's ``latency_median_ms`` was the median over inputs; the plain median of an export summary
keeps that name, so the per-input one was renamed."""


class ResultFormatError(ValueError):
    """A stored result cannot be read as an `EvalResult` (the message names the field)."""


def metric_drop(baseline: float, value: float, higher_is_better: bool = True) -> float:
    """How much worse ``value`` is than ``baseline``, in the metric's points (positive: worse),
    whichever way the metric points.

    Example:
        >>> metric_drop(99.0, 98.5), metric_drop(0.20, 0.25, higher_is_better=False)
        (0.5, 0.05)
    """
    return baseline - value if higher_is_better else value - baseline


@dataclass(frozen=True)
class Measurement:
    """What one strategy measured on one runtime."""

    accuracy: float
    """The workload's metric on its eval split, in points (percent)."""
    latency: LatencyStats
    """The timing of one batch (`LatencyStats.not_timed` in the latency-free mode)."""
    flops: int
    """FLOPs of one batch-1 forward (2 × MACs of convs/matmuls)."""
    weighted_flops: float
    """FLOPs weighted by each module's precision cost (int8 = ¼): the ideal cost."""
    params: int
    """Parameters of the built model."""
    size_bytes: int
    """Size of the compiled model's files."""
    info: dict[str, Any]
    """Runtime, build and machine notes (JSON-ready; not metrics)."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (the latency statistics nested as their own dict)."""
        data = asdict(self)
        data["latency"] = self.latency.to_dict()
        return data


@dataclass(frozen=True, eq=False)
class EvalResult:
    """A strategy's measurement next to the unchanged model's, on the same runtime and run.

    The fields are exactly the keys of ``to_dict()`` (``action_metrics`` flattened into its top
    level, plus ``strategy_key``). Equality treats NaN as equal to NaN, so a not-timed result
    equals itself after a JSON round trip.
    """

    workload: str
    """The workload (or bring-your-own model spec) measured."""
    runtime: str
    """The runtime both models were measured on."""
    strategy: Strategy
    """The strategy measured."""
    accuracy: float
    """The candidate's metric on the eval split, in points."""
    baseline_accuracy: float
    """The unchanged model's metric."""
    accuracy_drop: float
    """``baseline_accuracy − accuracy``, in points."""
    latency_ms: float
    """The candidate's latency: the median, or the mean over inputs of each input's median when
    its cost depends on the input (NaN when not timed)."""
    latency_p90_ms: float
    """90th percentile of the candidate's timed runs."""
    latency_spread: float
    """``(p90 − p10) / median`` of the candidate's runs."""
    latency_stable: bool
    """The candidate's median settled within the protocol's tolerance."""
    latency_runs: int
    """Timed runs of the candidate (0 when not timed)."""
    baseline_latency_ms: float
    """The unchanged model's latency, taken the same way."""
    baseline_latency_p90_ms: float
    """90th percentile of the unchanged model's runs."""
    baseline_latency_spread: float
    """``(p90 − p10) / median`` of the unchanged model's runs (NaN in records older than it)."""
    baseline_latency_stable: bool
    """The unchanged model's timing settled (`LatencyStats.stable`; True in older records,
    which did not say)."""
    speedup: float
    """``baseline_latency_ms / latency_ms``; the FLOP-ideal speedup when latency was not timed."""
    speedup_source: SpeedupSource
    """``latency`` when the candidate was timed, ``flops`` in the latency-free mode."""
    ideal_speedup: float
    """Baseline over candidate precision-weighted FLOPs: what a perfect runtime would give."""
    realization: float
    """``speedup / ideal_speedup``: how much of the ideal the runtime delivered."""
    flops: int
    """FLOPs of one batch-1 forward of the candidate."""
    baseline_flops: int
    """FLOPs of the unchanged model."""
    params: int
    """Parameters of the candidate."""
    baseline_params: int
    """Parameters of the unchanged model."""
    size_bytes: int
    """Size of the candidate's compiled files."""
    baseline_size_bytes: int
    """Size of the unchanged model's compiled files."""
    info: dict[str, Any] = field(default_factory=dict)
    """The candidate's runtime, build and machine notes (not metrics)."""
    action_metrics: dict[str, float] = field(default_factory=dict)
    """Fields the strategy's actions add (``search_spaces.actions.record_metrics``, e.g. dynamic
    skip's ``executed_share``); flattened into ``to_dict()``'s top level."""

    _FLOAT: ClassVar[frozenset[str]] = frozenset(
        {
            "accuracy",
            "baseline_accuracy",
            "accuracy_drop",
            "latency_ms",
            "latency_p90_ms",
            "latency_spread",
            "baseline_latency_ms",
            "baseline_latency_p90_ms",
            "baseline_latency_spread",
            "speedup",
            "ideal_speedup",
            "realization",
        }
    )
    _INT: ClassVar[frozenset[str]] = frozenset(
        {
            "latency_runs",
            "flops",
            "baseline_flops",
            "params",
            "baseline_params",
            "size_bytes",
            "baseline_size_bytes",
        }
    )

    @classmethod
    def of(
        cls,
        workload: str,
        strategy: Strategy,
        runtime: str,
        candidate: Measurement,
        baseline: Measurement,
        higher_is_better: bool = True,
    ) -> EvalResult:
        """The result of ``candidate`` against ``baseline`` (both measured on ``runtime``);
        its drop follows the metric's direction."""
        c, b = candidate, baseline
        ideal = b.weighted_flops / max(c.weighted_flops, 1.0)
        if c.latency.timed and b.latency.timed:
            speedup = b.latency.expected_ms / c.latency.expected_ms
        else:
            speedup = ideal
        return cls(
            workload=workload,
            runtime=runtime,
            strategy=strategy,
            accuracy=c.accuracy,
            baseline_accuracy=b.accuracy,
            accuracy_drop=metric_drop(b.accuracy, c.accuracy, higher_is_better),
            latency_ms=c.latency.expected_ms,
            latency_p90_ms=c.latency.p90_ms,
            latency_spread=c.latency.spread,
            latency_stable=c.latency.stable,
            latency_runs=c.latency.runs,
            baseline_latency_ms=b.latency.expected_ms,
            baseline_latency_p90_ms=b.latency.p90_ms,
            baseline_latency_spread=b.latency.spread,
            baseline_latency_stable=b.latency.stable or not b.latency.timed,
            speedup=speedup,
            speedup_source="latency" if c.latency.timed else "flops",
            ideal_speedup=ideal,
            realization=speedup / ideal,
            flops=c.flops,
            baseline_flops=b.flops,
            params=c.params,
            baseline_params=b.params,
            size_bytes=c.size_bytes,
            baseline_size_bytes=b.size_bytes,
            info=c.info,
            action_metrics=_action_metrics(c),
        )

    def __post_init__(self) -> None:
        clash = sorted(
            set(self.action_metrics) & ({f.name for f in fields(self)} | {"strategy_key"})
        )
        if clash:
            raise ValueError(
                f"action metrics {', '.join(clash)} would overwrite EvalResult fields; "
                "rename them in the action's record_metrics"
            )

    @property
    def latency_doubts(self) -> tuple[str, ...]:
        """Why this speedup may not be what the deployed model gets (empty: nothing seen).

        A speedup above the FLOP-ideal by more than `MAX_REALIZATION` almost always means the
        baseline was timed slow (a load spike); an unstable timing on either side moves the
        ratio by as much as its spread.
        """
        if self.speedup_source != "latency":
            return ()
        doubts = []
        if self.realization > MAX_REALIZATION:
            doubts.append(
                f"speedup {self.speedup:.2f}x is {self.realization:.2f}x the FLOP-ideal "
                f"{self.ideal_speedup:.2f}x (a slow baseline timing?)"
            )
        # a record rebuilt from metrics alone does not know its spread: no doubt without one
        if not self.baseline_latency_stable and math.isfinite(self.baseline_latency_spread):
            doubts.append(f"baseline timing unstable (spread {self.baseline_latency_spread:.2f})")
        if not self.latency_stable and math.isfinite(self.latency_spread):
            doubts.append(f"candidate timing unstable (spread {self.latency_spread:.2f})")
        return tuple(doubts)

    @property
    def baseline_in_doubt(self) -> bool:
        """The doubt is the baseline's (timing it again may clear it)."""
        return self.speedup_source == "latency" and (
            self.realization > MAX_REALIZATION
            or (not self.baseline_latency_stable and math.isfinite(self.baseline_latency_spread))
        )

    @property
    def strategy_key(self) -> str:
        """``strategy.key()``: the cache and report key of the strategy."""
        return self.strategy.key()

    def to_dict(self) -> dict[str, Any]:
        """Stable, JSON-ready keys (the ``--json`` output, the cache and ``result.json``)."""
        head = {
            "workload": self.workload,
            "runtime": self.runtime,
            "strategy": self.strategy.to_dict(),
            "strategy_key": self.strategy_key,
        }
        rest = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in head and f.name != "action_metrics"
        }
        return {**head, **rest, **self.action_metrics}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvalResult:
        """The inverse of `to_dict`, also for every older shape of it.

        A key that is missing reads as unknown (NaN, 0 or ``""``; the derived ``accuracy_drop``,
        ``realization`` and ``speedup_source`` are derived again): results rebuilt from an old
        MLflow run's metrics hold only some fields. Numeric keys that are not fields are action
        metrics; ``latency_median_ms`` of a pre-issue-15 dynamic-skip record is read as
        ``latency_input_median_ms`` (`LEGACY_KEYS`).

        Raises:
            ResultFormatError: ``strategy`` is missing or unreadable, or a field has the wrong
                type (the message names it).
        """
        if "strategy" not in data:
            raise ResultFormatError("result has no 'strategy'; it is not an EvalResult record")
        try:
            strategy = Strategy.from_dict(data["strategy"])
        except Exception as exc:
            raise ResultFormatError(f"result field 'strategy': {exc}") from exc
        names = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        for name in cls._FLOAT:
            values[name] = _number(data, name, float)
        for name in cls._INT:
            values[name] = _number(data, name, int)
        if "accuracy_drop" not in data:
            values["accuracy_drop"] = values["baseline_accuracy"] - values["accuracy"]
        if "realization" not in data:
            values["realization"] = _ratio(values["speedup"], values["ideal_speedup"])
        source: SpeedupSource
        stored = data.get("speedup_source")
        if stored is None:  # written before the latency-free mode existed
            source = "latency" if values["latency_runs"] > 0 else "flops"
        elif stored in ("latency", "flops"):
            source = stored
        else:
            raise ResultFormatError(f"result field 'speedup_source': unknown value {stored!r}")
        info = data.get("info") or {}
        if not isinstance(info, Mapping):
            raise ResultFormatError(f"result field 'info' must be an object, got {info!r}")
        actions: dict[str, float] = {}
        for key, value in data.items():
            if key in names or key == "strategy_key" or isinstance(value, bool):
                continue
            if value is None:
                value = math.nan  # a not-timed dynamic record had no per-input latency
            if not isinstance(value, int | float):
                continue  # not a metric (a note a future version added): dropped
            if key in LEGACY_KEYS:  # the current name wins if a record has both
                actions.setdefault(LEGACY_KEYS[key], value)
            else:
                actions[key] = value
        return cls(
            workload=str(data.get("workload") or ""),
            runtime=str(data.get("runtime") or ""),
            strategy=strategy,
            latency_stable=bool(data.get("latency_stable", False)),
            baseline_latency_stable=bool(data.get("baseline_latency_stable", True)),
            speedup_source=source,
            info=dict(info),
            action_metrics=actions,
            **values,
        )

    def metrics(self) -> dict[str, float]:
        """What a candidate run logs to MLflow: `CORE_METRICS` plus the action metrics."""
        core = {name: float(getattr(self, name)) for name in CORE_METRICS}
        return {**core, **{k: float(v) for k, v in self.action_metrics.items()}}

    def value(self, name: str) -> float:
        """A numeric field or action metric by name, NaN when there is none.

        For callers that pick columns by name (tables, sort keys); code that knows the field
        reads the attribute.
        """
        if name in self.action_metrics:
            return float(self.action_metrics[name])
        if name in self._FLOAT or name in self._INT or name in _BOOL:
            return float(getattr(self, name))
        return math.nan

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EvalResult):
            return NotImplemented
        return _nan_safe(self.to_dict()) == _nan_safe(other.to_dict())

    __hash__ = None  # type: ignore[assignment]  # holds dicts: not hashable, like before


def _action_metrics(m: Measurement) -> dict[str, float]:
    """The fields the candidate's actions add to its record (empty for most strategies)."""
    from search_spaces.actions import record_metrics

    return dict(record_metrics(m.info, m.latency.to_dict()))


def _number(data: Mapping[str, Any], name: str, kind: type[int] | type[float]) -> Any:
    value = data.get(name)
    if value is None:  # missing: unknown
        return math.nan if kind is float else 0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ResultFormatError(f"result field {name!r} must be a number, got {value!r}")
    if kind is int:
        if not math.isfinite(value):
            return 0
        return int(value)
    return float(value)


def _ratio(a: float, b: float) -> float:
    return a / b if b and math.isfinite(a) and math.isfinite(b) else math.nan


def _nan_safe(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, dict):
        return {k: _nan_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_nan_safe(v) for v in value]
    return value


__all__ = [
    "CORE_METRICS",
    "LEGACY_KEYS",
    "MAX_REALIZATION",
    "EvalResult",
    "Measurement",
    "ResultFormatError",
]
