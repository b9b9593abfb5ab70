"""`Tracker`: the one writer of a search's MLflow record — parent run, candidate runs, best model.

The driver process owns a :class:`Tracker` and is the only writer (SQLite locks under concurrent
writers). The layout it writes is described in :mod:`agent.tracking`; the names it uses are in
:mod:`agent.tracking.keys`, and :mod:`agent.tracking.readers` reads them back.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from agent.records import CandidateRecord
from agent.tracking.keys import (
    BASELINE_PREFIX,
    DOUBT_TAG,
    ERROR_TAG,
    ESTIMATED_TAG,
    EVAL_SPEC_ARTIFACT,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    EXTRA_PARAM_PREFIX,
    FIDELITY_TAG,
    HEADLINE_METRICS,
    INDEX_TAG,
    KIND_TAG,
    MAX_TAG_VALUE,
    MODEL_NOT_LOGGED_TAG,
    NOTE_TAG,
    PARENT_RUN_TAG,
    PARETO_TAG,
    RESULT_ARTIFACT,
    SEARCH_DIR_TAG,
    SEARCH_STAT_PREFIX,
    STRATEGY_ARTIFACT,
    SUMMARY_TAG,
    VIEW_TAG_PREFIX,
    flatten,
    int_or,
    machine_tags,
    metric_entities,
    now_ms,
    param_key,
    param_value,
    strategy_aggregates,
    strategy_params,
    truncate,
)
from agent.tracking.models import OnnxWriter, log_torch_model
from agent.tracking.readers import load_search_runs
from agent.tracking.uri import artifact_root, default_tracking_uri, store_setup_lock
from agent.tracking.views import runs_view_state

if TYPE_CHECKING:
    import torch
    from mlflow import MlflowClient

    from envs.workloads.inputs import Inputs

RunStatus = Literal["FINISHED", "KILLED", "FAILED"]


class Tracker:
    """Logs one search to MLflow: a parent run, a nested run per candidate, the best model.

    Args:
        tracking_uri: An MLflow tracking URI; ``None`` means the embedded SQLite store
            :func:`~agent.tracking.uri.default_tracking_uri` of ``workdir``.
        experiment: Experiment name, created on first use (artifacts under ``mlartifacts/``
            beside a SQLite database, tagged so the UI opens on the runs table).
        workdir: Where the default store lives (default: the current directory).
    """

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment: str = "layerpilot",
        workdir: Path | None = None,
    ) -> None:
        from mlflow import MlflowClient

        if tracking_uri is None:
            workdir = Path(workdir or Path.cwd()).resolve()
            workdir.mkdir(parents=True, exist_ok=True)
            tracking_uri = default_tracking_uri(workdir)
        self.tracking_uri = tracking_uri
        with store_setup_lock(tracking_uri):  # a fresh store's schema is created here, once
            self.client: MlflowClient = MlflowClient(tracking_uri)
            self.experiment_id = self._ensure_experiment(experiment)
        self.parent_run_id: str | None = None
        self._pareto: set[str] = set()

    def _ensure_experiment(self, name: str) -> str:
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            root = artifact_root(self.tracking_uri)
            return self.client.create_experiment(
                name,
                artifact_location=root.as_uri() if root is not None else None,
                tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
            )
        if EXPERIMENT_KIND_TAG not in experiment.tags:
            self.client.set_experiment_tag(
                experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND
            )
        return str(experiment.experiment_id)

    @property
    def _parent(self) -> str:
        if self.parent_run_id is None:
            raise RuntimeError("no search is being tracked: call Tracker.start_search() first")
        return self.parent_run_id

    def start_search(
        self,
        name: str,
        config: Mapping[str, Any],
        workload: Mapping[str, Any],
        baseline: Mapping[str, Any],
        search_dir: Path,
        eval_spec: Mapping[str, Any] | None = None,
    ) -> str:
        """Create the parent run of a search and return its id.

        Args:
            name: The run name (e.g. ``ppo-digits-resnet``).
            config: The resolved search config, logged flattened as params; its ``agent`` entry
                (if any) also becomes the ``layerpilot.agent`` tag.
            workload: Workload facts, logged as ``workload.*`` params; ``name`` is also tagged.
            baseline: The unchanged model's measurement; numeric entries become ``baseline_*``
                metrics (``accuracy`` -> ``baseline_accuracy``).
            search_dir: The directory holding ``search.json`` and ``candidates.jsonl``.
            eval_spec: How candidates are measured, ``EvalSpec.to_dict()``; saved as the
                ``eval_spec.json`` artifact that :func:`~agent.tracking.readers.load_eval_spec`
                reads back (export and report use it instead of rebuilding the setup).
        """
        from mlflow.entities import Param

        tags = {
            KIND_TAG: "search",
            "layerpilot.agent": str(config.get("agent", "")),
            "layerpilot.workload": str(workload.get("name", "")),
            SEARCH_DIR_TAG: str(Path(search_dir).resolve()),
            **machine_tags(),
        }
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        run_id = run.info.run_id
        params = {**flatten(config), **flatten(workload, "workload.")}
        metrics = {
            key if key.startswith(BASELINE_PREFIX) else f"{BASELINE_PREFIX}{key}": value
            for key, value in baseline.items()
        }
        self.client.log_batch(
            run_id,
            metrics=metric_entities(metrics, timestamp=now_ms()),
            params=[Param(key, value) for key, value in params.items()],
        )
        if eval_spec is not None:
            self.client.log_text(run_id, _json(eval_spec), EVAL_SPEC_ARTIFACT)
        self.parent_run_id = run_id
        self._pareto = set()
        return run_id

    def log_candidate(self, record: CandidateRecord) -> str:
        """Log one evaluated candidate as a nested run and return its run id.

        The run holds the strategy as params and ``strategy.json``, the result's metrics
        (``EvalResult.metrics()``) and, when measured, the full result as ``result.json``, so
        :func:`~agent.tracking.readers.records_from_runs` rebuilds the record exactly. Its
        duration is the evaluation's wall time; a failed candidate ends FAILED with its error
        in the ``error`` tag. Costs a few SQLite transactions and two small files.
        """
        from mlflow.entities import Param

        outcome = record.outcome
        end = now_ms()
        start = end - round(max(outcome.eval_seconds, 0.0) * 1000)
        tags = {
            PARENT_RUN_TAG: self._parent,
            KIND_TAG: "candidate",
            INDEX_TAG: str(record.index),
            "layerpilot.source": record.source,
            "layerpilot.strategy_key": outcome.strategy.key(),
            FIDELITY_TAG: outcome.fidelity,
            ESTIMATED_TAG: str(record.estimated).lower(),
        }
        if outcome.worker:
            tags["layerpilot.worker"] = outcome.worker
        if outcome.node:
            tags["layerpilot.node"] = outcome.node
        if outcome.attempts > 1:
            tags["layerpilot.attempts"] = str(outcome.attempts)
        if outcome.error:
            tags[ERROR_TAG] = truncate(outcome.error, MAX_TAG_VALUE)
        tags[SUMMARY_TAG] = truncate(_strategy_line(outcome.strategy), MAX_TAG_VALUE)
        if outcome.result is not None and outcome.result.latency_doubts:
            tags[DOUBT_TAG] = truncate("; ".join(outcome.result.latency_doubts), MAX_TAG_VALUE)
        run = self.client.create_run(
            self.experiment_id, start_time=start, tags=tags, run_name=candidate_run_name(record)
        )
        run_id = run.info.run_id

        params = strategy_params(outcome.strategy.to_dict())
        params.update(strategy_aggregates(outcome.strategy.to_dict()))
        params["source"] = record.source
        params["cached"] = str(record.cached)
        for key, value in record.extras.items():
            if isinstance(value, str | int | float | bool):
                params[param_key(f"{EXTRA_PARAM_PREFIX}{key}")] = param_value(value)
        values: dict[str, Any] = {} if outcome.result is None else outcome.result.metrics()
        values.update(reward=record.reward, eval_seconds=outcome.eval_seconds)
        if record.deployed_drop is not None and math.isfinite(record.deployed_drop):
            values["deployed_drop"] = record.deployed_drop
        self.client.log_batch(
            run_id,
            metrics=metric_entities(values, timestamp=end),
            params=[Param(key, value) for key, value in params.items()],
        )
        self.client.log_text(run_id, outcome.strategy.to_json(), STRATEGY_ARTIFACT)
        if outcome.result is not None:
            self.client.log_text(run_id, _json(outcome.result.to_dict()), RESULT_ARTIFACT)
        self.client.set_terminated(run_id, "FINISHED" if record.ok else "FAILED", end_time=end)
        return run_id

    def resume_search(
        self, parent_run_id: str, records: Sequence[CandidateRecord]
    ) -> dict[int, str]:
        """Reopen a killed search's parent run and make its candidate runs match ``records``.

        A candidate whose run is missing, or was cut off before it ended (still RUNNING), is
        logged again (the cut-off run is deleted); a run whose record is gone from ``records``
        (cut from ``candidates.jsonl``: the search lands it again) is deleted, so no candidate
        has two runs. Returns ``{record index: run id}``.
        """
        self.client.update_run(parent_run_id, status="RUNNING")
        self.parent_run_id = parent_run_id
        complete: dict[int, str] = {}
        runs = load_search_runs(self.tracking_uri, parent_run_id, with_strategy=False)
        for run in runs:
            if run["tags"].get(KIND_TAG) != "candidate":
                continue
            index = int_or(run["tags"].get(INDEX_TAG), -1)
            if run["status"] in ("FINISHED", "FAILED") and index not in complete:
                complete[index] = run["run_id"]
                if run["tags"].get(PARETO_TAG) == "true":
                    self._pareto.add(run["run_id"])
            else:  # cut off mid-write by the kill, or a duplicate
                self.client.delete_run(run["run_id"])
        kept = {record.index for record in records}
        for index in [i for i in complete if i not in kept]:
            # its record was cut from candidates.jsonl: the search lands it again, as a new run
            orphan = complete.pop(index)
            self.client.delete_run(orphan)
            self._pareto.discard(orphan)
        return {
            record.index: complete.get(record.index) or self.log_candidate(record)
            for record in records
        }

    def mark_pareto(self, run_ids: list[str]) -> None:
        """Tag exactly these candidate runs ``pareto=true``, removing earlier marks not in it."""
        current = set(run_ids)
        for run_id in self._pareto - current:
            self.client.delete_tag(run_id, PARETO_TAG)
        for run_id in current - self._pareto:
            self.client.set_tag(run_id, PARETO_TAG, "true")
        self._pareto = current

    def log_best_model(
        self,
        run_id: str,
        model: torch.nn.Module,
        example_input: Inputs,
        onnx_form: OnnxWriter | None = None,
    ) -> str:
        """Log ``model`` as the MLflow model ``model`` of the candidate run ``run_id``.

        Saved by the one model policy of :mod:`agent.tracking.models` (``torch.export``; the
        ONNX graph ``onnx_form`` writes when it does not trace; never a pickle). Returns the
        model URI (``models:/<model_id>``).
        """
        return log_torch_model(
            self.client, self.tracking_uri, run_id, model, example_input, onnx_form=onnx_form
        ).uri

    def note_model_not_logged(self, run_id: str, reason: str) -> None:
        """Say on ``run_id`` why it carries no model (`MODEL_NOT_LOGGED_TAG`)."""
        self.client.set_tag(run_id, MODEL_NOT_LOGGED_TAG, truncate(reason, MAX_TAG_VALUE))

    def log_artifact(self, run_id: str, path: Path) -> None:
        """Attach a file (or a directory, under its own name) to a run."""
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(run_id, str(path), artifact_path=path.name)
        else:
            self.client.log_artifact(run_id, str(path))

    def finish_search(self, summary_metrics: Mapping[str, Any], status: RunStatus) -> None:
        """Log the search's summary on the parent run and end it with ``status``: the headline
        figures (`HEADLINE_METRICS`) as metrics, the bookkeeping ones (seconds, counts per
        fidelity) as ``layerpilot.search.*`` tags, so candidate charts are not crowded."""
        from mlflow.entities import RunTag

        if status not in ("FINISHED", "KILLED", "FAILED"):
            raise ValueError(f"status must be FINISHED, KILLED or FAILED, got {status!r}")
        parent = self._parent
        headline = {k: v for k, v in summary_metrics.items() if k in HEADLINE_METRICS}
        stats = [
            RunTag(param_key(f"{SEARCH_STAT_PREFIX}{k}"), param_value(v))
            for k, v in summary_metrics.items()
            if k not in HEADLINE_METRICS
        ]
        metrics = metric_entities(headline, timestamp=now_ms())
        if metrics or stats:
            self.client.log_batch(parent, metrics=metrics, tags=stats)
        self.client.set_terminated(parent, status)
        self.parent_run_id = None

    def describe_search(
        self, best: CandidateRecord | None, best_run_id: str | None, bound: float
    ) -> None:
        """Write the parent run's description (what the MLflow UI shows on top of it): the
        best candidate within ``bound`` points, its figures, strategy and a link to its run."""
        parent = self._parent
        if best is None or best.result is None:
            text = f"No candidate measured within {bound:g} points yet."
        else:
            r = best.result
            link = (
                f"[candidate {best.index}](#/experiments/{self.experiment_id}/runs/{best_run_id})"
                if best_run_id
                else f"candidate {best.index}"
            )
            text = (
                f"**Best within {bound:g} points: {link}** (measured after {best.fidelity} "
                f"recovery)\n\n"
                f"- speedup **{r.speedup:.2f}x** ({r.baseline_latency_ms:.3f} ms → "
                f"{r.latency_ms:.3f} ms)\n"
                f"- metric {r.accuracy:.2f} (drop {r.accuracy_drop:+.2f} points)\n"
                f"- strategy: `{truncate(_strategy_line(best.strategy), 1500)}`\n\n"
                f"Export it with `layerpilot export <search dir> --format onnx --out DIR`."
            )
        self.client.set_tag(parent, NOTE_TAG, text)

    def save_view(self, bound: float, deployed: str) -> str:
        """Save this search's runs-table view as an MLflow 3 shared view (an experiment tag
        `VIEW_TAG_PREFIX` + the parent run id) and return the key the UI opens it with
        (``#/experiments/<id>/runs?viewStateShareKey=<key>``): the candidates within ``bound``
        points at the ``deployed`` fidelity, fastest first, with the headline columns."""
        parent = self._parent
        state = runs_view_state(parent, bound, deployed)
        self.client.set_experiment_tag(self.experiment_id, f"{VIEW_TAG_PREFIX}{parent}", state)
        return parent


def candidate_run_name(record: CandidateRecord) -> str:
    """``cand-0042 · 9.73x · drop 0.22 · full`` (``cand-0042 · failed``): the headline figures,
    readable in the runs table without opening a column."""
    name = f"cand-{record.index:04d}"
    result = record.outcome.result
    if not record.ok or result is None:
        return f"{name} · failed"
    return f"{name} · {result.speedup:.2f}x · drop {result.accuracy_drop:.2f} · {record.fidelity}"


def _strategy_line(strategy: Any) -> str:
    from agent.report import compact_strategy  # agent.report reads MLflow through this package

    return compact_strategy(strategy)


def _json(data: Mapping[str, Any]) -> str:
    # default=str: a result's free-form ``info`` may hold paths or numpy scalars
    return json.dumps(dict(data), indent=2, default=str)


__all__ = ["RunStatus", "Tracker"]
