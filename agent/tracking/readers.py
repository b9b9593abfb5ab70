"""Reading a search back from MLflow alone: its runs, baseline, evaluation setup and records.

What :class:`~agent.tracking.writer.Tracker` wrote is read here by the same names
(:mod:`agent.tracking.keys`). Runs logged by older versions lack the ``result.json`` and
``eval_spec.json`` artifacts; their records are rebuilt from metrics and params instead, and
their setup reads as ``None``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from agent.records import CandidateRecord
from agent.tracking.keys import (
    AGGREGATE_PREFIX,
    BASELINE_PREFIX,
    DEFAULT_UNIT_PARAM,
    ERROR_TAG,
    ESTIMATED_TAG,
    EVAL_SPEC_ARTIFACT,
    EXTRA_PARAM_PREFIX,
    FIDELITY_TAG,
    INDEX_TAG,
    KIND_TAG,
    PARENT_RUN_TAG,
    RESULT_ARTIFACT,
    RUN_METRICS,
    STRATEGY_ARTIFACT,
    int_or,
    parse_param,
)
from agent.tracking.uri import read_json_artifact
from runners.job import Outcome
from runners.result import EvalResult
from search_spaces import Strategy

if TYPE_CHECKING:
    from mlflow.entities import Run


def load_run(tracking_uri: str, run_id: str) -> dict[str, Any]:
    """One run as a plain dict (see :func:`load_search_runs` for the keys)."""
    from mlflow import MlflowClient

    return _run_dict(MlflowClient(tracking_uri).get_run(run_id))


def load_search(
    tracking_uri: str, parent_run_id: str
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """A search as MLflow holds it: its candidate runs and its baseline measurement.

    Enough for :func:`records_from_runs` and :func:`agent.report.write_report`.
    """
    runs = load_search_runs(tracking_uri, parent_run_id)
    return runs, baseline_from_run(load_run(tracking_uri, parent_run_id))


def baseline_from_run(run: Mapping[str, Any]) -> dict[str, float]:
    """The baseline of a search's parent run dict: its ``baseline_*`` metrics, unprefixed."""
    prefix = BASELINE_PREFIX
    return {k[len(prefix) :]: v for k, v in run["metrics"].items() if k.startswith(prefix)}


def load_eval_spec(tracking_uri: str, run_id: str) -> dict[str, Any] | None:
    """How a search measured its candidates: the ``EvalSpec.to_dict()`` its parent run holds.

    ``run_id`` is the search's parent run or one of its candidate runs (followed to the
    parent). ``None`` for a search logged before the setup was saved; build the spec with
    ``EvalSpec.from_dict`` (which checks its version).
    """
    run = load_run(tracking_uri, run_id)
    if run["tags"].get(KIND_TAG) == "candidate" and PARENT_RUN_TAG in run["tags"]:
        run = load_run(tracking_uri, run["tags"][PARENT_RUN_TAG])
    return read_json_artifact(run["artifact_uri"], EVAL_SPEC_ARTIFACT)


def load_search_runs(
    tracking_uri: str,
    parent_run_id: str,
    with_strategy: bool = True,
    with_result: bool = True,
) -> list[dict[str, Any]]:
    """The candidate runs of a search, oldest first, as plain dicts.

    Each dict has ``run_id``, ``run_name``, ``status``, ``start_time``, ``end_time`` (ms),
    ``params``, ``metrics``, ``tags``, ``artifact_uri``; with ``with_strategy``, ``strategy``:
    the parsed ``strategy.json`` artifact, and with ``with_result``, ``result``: the parsed
    ``result.json`` — each ``None`` when it cannot be read (an older run, a failed one).
    """
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    parent = client.get_run(parent_run_id)
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(
            [parent.info.experiment_id],
            filter_string=f"tags.`{PARENT_RUN_TAG}` = '{parent_run_id}'",
            max_results=1000,
            order_by=["attributes.start_time ASC"],
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            break
    dicts = [_run_dict(run) for run in runs]
    for entry in dicts:
        if with_strategy:
            entry["strategy"] = read_json_artifact(entry["artifact_uri"], STRATEGY_ARTIFACT)
        if with_result:
            entry["result"] = read_json_artifact(entry["artifact_uri"], RESULT_ARTIFACT)
    dicts.sort(key=lambda d: (int_or(d["tags"].get(INDEX_TAG), 1 << 62), d["run_id"]))
    return dicts


def records_from_runs(runs: Sequence[Mapping[str, Any]]) -> list[CandidateRecord]:
    """Candidate records rebuilt from :func:`load_search_runs` dicts, in index order.

    A run with a ``result.json`` gives back the record it was logged from: the measured result
    exactly, the strategy from ``strategy.json``, the worker, node and attempts from its tags
    and the scalar extras from its ``extra:`` params (a string extra that reads as a number
    comes back as that number). An older run's result is rebuilt from its metrics, and a
    strategy without ``strategy.json`` from the ``<unit>.<action>`` params.
    """
    records = []
    for position, run in enumerate(runs):
        params, metrics, tags = run["params"], run["metrics"], run["tags"]
        data = run.get("strategy")
        strategy = Strategy.from_dict(data) if data else _strategy_from_params(params)
        common = {
            "eval_seconds": float(metrics.get("eval_seconds", 0.0)),
            "worker": tags.get("layerpilot.worker", ""),
            "node": tags.get("layerpilot.node", ""),
            "attempts": int_or(tags.get("layerpilot.attempts"), 1),
            "fidelity": tags.get(FIDELITY_TAG, "none"),
        }
        if run["status"] == "FINISHED":
            data = run.get("result") or _result_from_metrics(metrics, strategy)
            outcome = Outcome(strategy, "ok", result=EvalResult.from_dict(data), **common)
        else:
            error = tags.get(ERROR_TAG) or f"run {run['run_id']} ended {run['status']}"
            outcome = Outcome(strategy, "failed", error=error, **common)
        reward = float(metrics.get("reward", 0.0))
        records.append(
            CandidateRecord(
                index=_index(tags.get(INDEX_TAG), run.get("run_name"), position),
                outcome=outcome,
                reward=reward if math.isfinite(reward) else 0.0,
                source=params.get("source", tags.get("layerpilot.source", "")),
                cached=params.get("cached") == "True",
                extras={
                    key.removeprefix(EXTRA_PARAM_PREFIX): parse_param(text)
                    for key, text in params.items()
                    if key.startswith(EXTRA_PARAM_PREFIX)
                },
                deployed_drop=_finite(metrics.get("deployed_drop")),
                estimated=tags.get(ESTIMATED_TAG) == "true",
            )
        )
    return sorted(records, key=lambda r: r.index)


def _result_from_metrics(metrics: Mapping[str, float], strategy: Strategy) -> dict[str, Any]:
    # a run logged before result.json: its metrics are some of the result's numeric fields
    # (EvalResult.from_dict reads the others as unknown)
    result: dict[str, Any] = {k: v for k, v in metrics.items() if k not in RUN_METRICS}
    result.update(strategy=strategy.to_dict(), strategy_key=strategy.key())
    return result


def _strategy_from_params(params: Mapping[str, str]) -> Strategy:
    units: dict[str, dict[str, Any]] = {}
    for key, text in params.items():
        unit, dot, action = key.rpartition(".")
        if not dot or not unit or key.startswith((EXTRA_PARAM_PREFIX, AGGREGATE_PREFIX)):
            continue  # source, cached, extras: not strategy entries
        unit = "*" if unit == DEFAULT_UNIT_PARAM else unit
        units.setdefault(unit, {})[action] = parse_param(text)
    return Strategy(units)


def _index(tag: str | None, run_name: str | None, position: int) -> int:
    for text in (tag, (run_name or "").removeprefix("cand-")):
        if text and text.isdigit():
            return int(text)
    return position


def _run_dict(run: Run) -> dict[str, Any]:
    return {
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "status": run.info.status,
        "start_time": run.info.start_time,
        "end_time": run.info.end_time,
        "params": dict(run.data.params),
        "metrics": dict(run.data.metrics),
        "tags": dict(run.data.tags),
        "artifact_uri": run.info.artifact_uri,
    }


def _finite(value: Any) -> float | None:
    """A logged metric as a float, None when missing or not finite."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


__all__ = [
    "baseline_from_run",
    "load_eval_spec",
    "load_run",
    "load_search",
    "load_search_runs",
    "records_from_runs",
]
