"""Every MLflow call of layerpilot: one parent run per search, one nested run per candidate.

The driver process owns a :class:`Tracker` and is the only writer (SQLite locks under concurrent
writers). The default store is embedded: ``sqlite:///<workdir>/mlflow.db`` with artifacts in
``<workdir>/mlartifacts`` — MLflow 3 refuses the old ``./mlruns`` file store. ``layerpilot ui``
serves the same two paths (see :mod:`agent.ui`).

Layout of a search in MLflow::

    experiment "layerpilot"             (tag mlflow.experimentKind=custom_model_development)
      run <search name>                 params: config, workload.*; metrics: baseline_*, summary
        run cand-0000 ... cand-NNNN     params: <unit>.<action>, source, cached
                                        metrics: accuracy, speedup, reward, ...
                                        artifact: strategy.json; tag pareto=true on the front

Example:
    >>> tracker = Tracker(workdir=tmp_path)  # doctest: +SKIP
    >>> tracker.start_search("ppo-digits", config, workload, baseline, search_dir)  # doctest: +SKIP
    >>> for record in records:  # doctest: +SKIP
    ...     tracker.log_candidate(record)
    >>> tracker.finish_search({"hypervolume": 41.2}, "FINISHED")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import posixpath
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlparse
from urllib.request import url2pathname

from agent.records import CandidateRecord

if TYPE_CHECKING:
    import torch
    from mlflow import MlflowClient
    from mlflow.entities import Run

    from runners.export import ExportedModel

logger = logging.getLogger(__name__)

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
"""Makes the MLflow 3 UI open the experiment on its runs table instead of the GenAI overview."""
PARENT_RUN_TAG = "mlflow.parentRunId"
SEARCH_DIR_TAG = "layerpilot.search_dir"
PARETO_TAG = "pareto"
ERROR_TAG = "error"
STRATEGY_ARTIFACT = "strategy.json"
DEFAULT_UNIT_PARAM = "_default"
"""Param prefix standing for the strategy's ``"*"`` unit (``*`` is not a legal MLflow key)."""
BASELINE_PREFIX = "baseline_"
"""Parent-run metric prefix of the baseline measurement (``baseline_accuracy``)."""
EXTRA_PARAM_PREFIX = "extra:"
"""Param prefix of a record's scalar extras (``extra:lam``); no module name holds a colon."""

CANDIDATE_METRICS = (
    "accuracy",
    "accuracy_drop",
    "latency_ms",
    "latency_p90_ms",
    "speedup",
    "ideal_speedup",
    "flops",
    "params",
    "size_bytes",
    # dynamic-skip candidates only (absent otherwise, so not logged)
    "executed_blocks",
    "executed_share",
    "gated_blocks",
    "dynamic_alpha",
    "latency_median_ms",
    "latency_input_p90_ms",
)
"""Result fields logged as metrics of a candidate run (plus ``reward`` and ``eval_seconds``)."""

# MLflow's limits (mlflow.utils.validation): keys, param values, tag values.
_MAX_KEY = 250
_MAX_PARAM_VALUE = 6000
_MAX_TAG_VALUE = 8000
_BAD_KEY_CHARS = re.compile(r"[^\w./\- :]")

RunStatus = Literal["FINISHED", "KILLED", "FAILED"]


def default_tracking_uri(workdir: Path | None = None) -> str:
    """The embedded store: ``sqlite:///<abs workdir>/mlflow.db``.

    Example:
        >>> default_tracking_uri(Path("/tmp/w"))
        'sqlite:////tmp/w/mlflow.db'
    """
    return f"sqlite:///{Path(workdir or Path.cwd()).resolve() / 'mlflow.db'}"


def artifact_root(tracking_uri: str) -> Path | None:
    """Where a local SQLite store keeps artifacts: ``mlartifacts/`` beside the database.

    ``None`` for other stores (a tracking server decides its own artifact location).

    Example:
        >>> artifact_root("sqlite:////tmp/w/mlflow.db")
        PosixPath('/tmp/w/mlartifacts')
    """
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix) or tracking_uri == prefix:
        return None
    database = Path(tracking_uri[len(prefix) :].split("?", 1)[0])
    return database.resolve().parent / "mlartifacts"


def param_key(name: str) -> str:
    """``name`` made into a legal MLflow param/metric/tag key.

    Characters MLflow refuses become ``_``, and names that would not be unique as file paths
    (``a//b``, ``../x``) are flattened.

    Example:
        >>> param_key("layer1.0.conv1.prune"), param_key("blocks[0]/../fc")
        ('layer1.0.conv1.prune', 'blocks_0__.._fc')
    """
    key = _BAD_KEY_CHARS.sub("_", name)[: _MAX_KEY - 1] or "_"
    if not _unique_as_path(key):
        key = key.replace("/", "_")
    if not _unique_as_path(key):
        key = "_" + key
    return key


def _unique_as_path(key: str) -> bool:
    norm = posixpath.normpath(key)
    return norm == key and norm != "." and not norm.startswith(("..", "/"))


def strategy_params(strategy_dict: Mapping[str, Any]) -> dict[str, str]:
    """A strategy flattened to params: ``{"<unit>.<action>": str(value)}``.

    The ``"*"`` unit is written as ``_default``. Keys are sanitised with :func:`param_key`, so
    the flat form is for browsing and filtering; ``strategy.json`` is the exact record.

    Example:
        >>> strategy_params({"units": {"*": {"precision": "int8"}, "layer1.0": {"skip": True}}})
        {'_default.precision': 'int8', 'layer1.0.skip': 'True'}
    """
    params = {}
    for unit, actions in strategy_dict.get("units", {}).items():
        unit_name = DEFAULT_UNIT_PARAM if unit == "*" else unit
        for action, value in actions.items():
            params[param_key(f"{unit_name}.{action}")] = _param_value(value)
    return params


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mappings as ``{"a.b.c": str(value)}`` params (lists and others as JSON).

    Example:
        >>> flatten({"agent": "ppo", "eval": {"threads": 1, "runtimes": ["ort"]}})
        {'agent': 'ppo', 'eval.threads': '1', 'eval.runtimes': '["ort"]'}
    """
    flat: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[param_key(name)] = _param_value(value)
    return flat


def machine_tags() -> dict[str, str]:
    """Where the search ran: platform, CPU count, Python, torch and onnxruntime versions."""

    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "not installed"

    return {
        "machine.platform": platform.platform(),
        "machine.processor": platform.processor() or platform.machine(),
        "machine.cpu_count": str(os.cpu_count()),
        "machine.python": platform.python_version(),
        "machine.torch": version("torch"),
        "machine.onnxruntime": version("onnxruntime"),
        "machine.mlflow": version("mlflow"),
    }


class Tracker:
    """Logs one search to MLflow: a parent run, a nested run per candidate, the best model.

    Args:
        tracking_uri: An MLflow tracking URI; ``None`` means the embedded SQLite store
            :func:`default_tracking_uri` of ``workdir``.
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
        """
        from mlflow.entities import Param

        tags = {
            "layerpilot.kind": "search",
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
            metrics=_metrics(metrics, timestamp=_now_ms()),
            params=[Param(key, value) for key, value in params.items()],
        )
        self.parent_run_id = run_id
        self._pareto = set()
        return run_id

    def log_candidate(self, record: CandidateRecord) -> str:
        """Log one evaluated candidate as a nested run and return its run id.

        The run's duration is the evaluation's wall time; a failed candidate ends FAILED with
        its error in the ``error`` tag. Costs a few SQLite transactions and one small file.
        """
        from mlflow.entities import Param

        outcome = record.outcome
        end = _now_ms()
        start = end - round(max(outcome.eval_seconds, 0.0) * 1000)
        tags = {
            PARENT_RUN_TAG: self._parent,
            "layerpilot.kind": "candidate",
            "layerpilot.index": str(record.index),
            "layerpilot.source": record.source,
            "layerpilot.strategy_key": outcome.strategy.key(),
        }
        if outcome.worker:
            tags["layerpilot.worker"] = outcome.worker
        if outcome.node:
            tags["layerpilot.node"] = outcome.node
        if outcome.attempts > 1:
            tags["layerpilot.attempts"] = str(outcome.attempts)
        if outcome.error:
            tags[ERROR_TAG] = _truncate(outcome.error, _MAX_TAG_VALUE)
        run = self.client.create_run(
            self.experiment_id, start_time=start, tags=tags, run_name=f"cand-{record.index:04d}"
        )
        run_id = run.info.run_id

        params = strategy_params(outcome.strategy.to_dict())
        params["source"] = record.source
        params["cached"] = str(record.cached)
        for key, value in record.extras.items():
            if isinstance(value, str | int | float | bool):
                params[param_key(f"{EXTRA_PARAM_PREFIX}{key}")] = _param_value(value)
        values = {name: outcome.metric(name) for name in CANDIDATE_METRICS}
        values.update(reward=record.reward, eval_seconds=outcome.eval_seconds)
        self.client.log_batch(
            run_id,
            metrics=_metrics(values, timestamp=end),
            params=[Param(key, value) for key, value in params.items()],
        )
        self.client.log_text(run_id, outcome.strategy.to_json(), STRATEGY_ARTIFACT)
        self.client.set_terminated(run_id, "FINISHED" if record.ok else "FAILED", end_time=end)
        return run_id

    def resume_search(
        self, parent_run_id: str, records: Sequence[CandidateRecord]
    ) -> dict[int, str]:
        """Reopen a killed search's parent run and make its candidate runs match ``records``.

        A candidate whose run is missing, or was cut off before it ended (still RUNNING), is
        logged again (the cut-off run is deleted). Returns ``{record index: run id}``.
        """
        self.client.update_run(parent_run_id, status="RUNNING")
        self.parent_run_id = parent_run_id
        complete: dict[int, str] = {}
        for run in load_search_runs(self.tracking_uri, parent_run_id, with_strategy=False):
            if run["tags"].get("layerpilot.kind") != "candidate":
                continue
            index = _int_or(run["tags"].get("layerpilot.index"), -1)
            if run["status"] in ("FINISHED", "FAILED") and index not in complete:
                complete[index] = run["run_id"]
                if run["tags"].get(PARETO_TAG) == "true":
                    self._pareto.add(run["run_id"])
            else:  # cut off mid-write by the kill, or a duplicate
                self.client.delete_run(run["run_id"])
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
        self, run_id: str, model: torch.nn.Module, example_input: torch.Tensor
    ) -> str:
        """Log ``model`` as an MLflow PyTorch model named ``model``, linked to ``run_id``.

        The signature comes from one forward pass on ``example_input``; pip requirements are
        pinned from installed versions rather than inferred, which would load the model in a
        subprocess. Returns the model URI (``models:/<model_id>``).
        """
        import mlflow.pytorch
        import torch
        from mlflow.models import infer_signature

        model.eval()
        signature = None
        try:
            with torch.no_grad():
                output = model(example_input)
            if isinstance(output, torch.Tensor):
                signature = infer_signature(
                    example_input.detach().cpu().numpy(), output.detach().cpu().numpy()
                )
        except Exception:  # the signature is documentation: a model without one still loads
            signature = None
        run = self.client.get_run(run_id)
        # The LoggedModel is created here, with the run's experiment: left to log_model it would
        # land in the process's "active" experiment (experiment 0 by default).
        logged = self.client.create_logged_model(
            experiment_id=run.info.experiment_id, name="model", source_run_id=run_id
        )
        requirements = [f"torch=={metadata.version('torch')}"]
        with _using_tracking_uri(self.tracking_uri):
            info = mlflow.pytorch.log_model(
                model,
                name="model",
                model_id=logged.model_id,
                run_id=run_id,
                signature=signature,
                pip_requirements=requirements,
                # pickle saves any module as built; pt2 would need torch.export to trace it.
                serialization_format="pickle",
            )
        self.client.finalize_logged_model(logged.model_id, "READY")
        return str(info.model_uri)

    def log_artifact(self, run_id: str, path: Path) -> None:
        """Attach a file (or a directory, under its own name) to a run."""
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(run_id, str(path), artifact_path=path.name)
        else:
            self.client.log_artifact(run_id, str(path))

    def finish_search(self, summary_metrics: Mapping[str, Any], status: RunStatus) -> None:
        """Log the search's summary metrics on the parent run and end it with ``status``."""
        if status not in ("FINISHED", "KILLED", "FAILED"):
            raise ValueError(f"status must be FINISHED, KILLED or FAILED, got {status!r}")
        parent = self._parent
        metrics = _metrics(summary_metrics, timestamp=_now_ms())
        if metrics:
            self.client.log_batch(parent, metrics=metrics)
        self.client.set_terminated(parent, status)
        self.parent_run_id = None


def load_run(tracking_uri: str, run_id: str) -> dict[str, Any]:
    """One run as a plain dict (see :func:`load_search_runs` for the keys)."""
    from mlflow import MlflowClient

    return _run_dict(MlflowClient(tracking_uri).get_run(run_id))


def load_search(
    tracking_uri: str, parent_run_id: str
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """A search as MLflow holds it: its candidate runs and its baseline measurement.

    Enough for :func:`agent.report.records_from_runs` and :func:`agent.report.write_report`.
    """
    runs = load_search_runs(tracking_uri, parent_run_id)
    return runs, baseline_from_run(load_run(tracking_uri, parent_run_id))


def baseline_from_run(run: Mapping[str, Any]) -> dict[str, float]:
    """The baseline of a search's parent run dict: its ``baseline_*`` metrics, unprefixed."""
    prefix = BASELINE_PREFIX
    return {k[len(prefix) :]: v for k, v in run["metrics"].items() if k.startswith(prefix)}


def load_search_runs(
    tracking_uri: str, parent_run_id: str, with_strategy: bool = True
) -> list[dict[str, Any]]:
    """The candidate runs of a search, oldest first, as plain dicts.

    Each dict has ``run_id``, ``run_name``, ``status``, ``start_time``, ``end_time`` (ms),
    ``params``, ``metrics``, ``tags``, ``artifact_uri`` and, with ``with_strategy``, ``strategy``:
    the parsed ``strategy.json`` artifact, or ``None`` when it cannot be read.
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
    if with_strategy:
        for entry in dicts:
            entry["strategy"] = _read_strategy(entry["artifact_uri"])
    dicts.sort(key=lambda d: (_int_or(d["tags"].get("layerpilot.index"), 1 << 62), d["run_id"]))
    return dicts


def _read_strategy(artifact_uri: str) -> dict[str, Any] | None:
    uri = f"{artifact_uri.rstrip('/')}/{STRATEGY_ARTIFACT}"
    try:
        parsed = urlparse(uri)
        if parsed.scheme in ("", "file"):  # the embedded store: read it, no download machinery
            text = Path(url2pathname(parsed.path)).read_text()
        else:
            from mlflow.artifacts import load_text

            text = load_text(uri)
        data = json.loads(text)
    except Exception:  # a missing or unreadable artifact: the caller falls back to params
        return None
    return data if isinstance(data, dict) else None


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


@contextmanager
def _using_tracking_uri(uri: str) -> Iterator[None]:
    # mlflow.<flavor>.log_model reads the process-wide tracking URI; set it only around the call.
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    with _use_tracking_uri(uri):
        yield


def _metrics(values: Mapping[str, Any], timestamp: int) -> list[Any]:
    from mlflow.entities import Metric

    return [
        Metric(param_key(key), float(value), timestamp, 0)
        for key, value in values.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ]


def _param_value(value: Any) -> str:
    if isinstance(value, str):
        text = value
    elif isinstance(value, bool | int | float) or value is None:
        text = str(value)
    else:
        text = json.dumps(value, sort_keys=True, default=str)
    return _truncate(text, _MAX_PARAM_VALUE)


def _truncate(text: str, limit: int) -> str:
    marker = "…[truncated]"
    return text if len(text) <= limit else text[: limit - len(marker)] + marker


def _int_or(text: str | None, default: int) -> int:
    try:
        return int(text) if text is not None else default
    except ValueError:
        return default


def _now_ms() -> int:
    return int(time.time() * 1000)


__all__ = [
    "CANDIDATE_METRICS",
    "Tracker",
    "artifact_root",
    "baseline_from_run",
    "default_tracking_uri",
    "flatten",
    "load_run",
    "load_search",
    "load_search_runs",
    "machine_tags",
    "param_key",
    "strategy_params",
]


def log_export(
    exported: ExportedModel,
    *,
    tracking_uri: str,
    parent_run_id: str | None = None,
    experiment: str = "layerpilot",
    register: str | None = None,
    example_input: torch.Tensor | None = None,
    torch_model: torch.nn.Module | None = None,
) -> dict[str, str]:
    """Log an export as its own run (nested under the search's parent run when known).

    The run holds the export's figures as metrics, ``report.md``, ``strategy.json`` and
    ``export.json`` as artifacts, and the model as an MLflow model with an input example and a
    signature: ``mlflow.onnx`` for the ONNX formats (TensorRT logs the ONNX its engine was built
    from, plus the engine as an artifact), ``mlflow.pytorch`` for ``torch`` (``torch.export``'d,
    so loading it unpickles no code). ``register`` adds it to the Model Registry under that name.

    Returns ``run_id``, ``model_uri`` and, when registered, ``model_version``.
    """
    from mlflow import MlflowClient
    from mlflow.entities import Param

    client = MlflowClient(tracking_uri)
    if parent_run_id is not None:
        experiment = client.get_experiment(client.get_run(parent_run_id).info.experiment_id).name
    tracker = Tracker(tracking_uri, experiment)
    tags = {
        "layerpilot.kind": "export",
        "layerpilot.format": exported.format,
        "layerpilot.workload": str(exported.source.get("workload", "")),
        "layerpilot.strategy_key": exported.strategy.key(),
        **machine_tags(),
    }
    if parent_run_id is not None:
        tags[PARENT_RUN_TAG] = parent_run_id
    run = tracker.client.create_run(
        tracker.experiment_id, run_name=f"export-{exported.format}", tags=tags
    )
    run_id = run.info.run_id
    params = {
        **strategy_params(exported.strategy.to_dict()),
        **flatten({"format": exported.format, "runtime": exported.runtime}, EXTRA_PARAM_PREFIX),
        **flatten(
            {k: v for k, v in exported.source.items() if isinstance(v, str | int | float)},
            f"{EXTRA_PARAM_PREFIX}source.",
        ),
        **flatten(
            {
                "steps": exported.recovery.steps,
                "temperature": exported.recovery.temperature,
                "alpha": exported.recovery.alpha,
            },
            f"{EXTRA_PARAM_PREFIX}recovery.",
        ),
    }
    tracker.client.log_batch(
        run_id,
        metrics=_metrics(exported.summary(), timestamp=_now_ms()),
        params=[Param(param_key(k), _param_value(v)) for k, v in params.items()],
    )
    for role in ("report", "strategy"):
        tracker.client.log_artifact(run_id, str(exported.out / exported.files[role]))
    tracker.client.log_artifact(run_id, str(exported.out / "export.json"))
    if exported.format == "tensorrt":
        tracker.client.log_artifact(run_id, str(exported.out / exported.files["model"]))
    result = {
        "run_id": run_id,
        **_log_export_model(tracker, run_id, exported, register, example_input, torch_model),
    }
    tracker.client.set_terminated(run_id, "FINISHED")
    return result


def _log_export_model(
    tracker: Tracker,
    run_id: str,
    exported: ExportedModel,
    register: str | None,
    example_input: torch.Tensor | None,
    torch_model: torch.nn.Module | None,
) -> dict[str, str]:
    import numpy as np
    from mlflow.models import infer_signature

    logged = tracker.client.create_logged_model(
        experiment_id=tracker.experiment_id, name="model", source_run_id=run_id
    )
    # two rows: a batch-1 example would pin the batch axis of the torch.export'ed model to 1
    x = None if example_input is None else example_input.detach().cpu().numpy().repeat(2, axis=0)
    with _using_tracking_uri(tracker.tracking_uri):
        if exported.format == "torch":
            import mlflow.pytorch
            import torch

            assert torch_model is not None, "a torch export is logged with its model"
            signature = None
            if x is not None:
                with torch.no_grad():
                    y = torch_model(torch.from_numpy(x)).numpy()
                signature = infer_signature(x, y)
            common = {
                "name": "model",
                "model_id": logged.model_id,
                "run_id": run_id,
                "signature": signature,
                "input_example": x,
                "pip_requirements": [f"torch=={metadata.version('torch')}"],
                "registered_model_name": register,
            }
            try:  # torch.export'ed: loading it runs no pickled code
                info = mlflow.pytorch.log_model(torch_model, export_model=True, **common)
            except Exception as exc:  # data-dependent control flow (dynamic skip) does not trace
                logger.warning("torch.export failed (%s); logging the model pickled", exc)
                tracker.client.set_tag(run_id, "layerpilot.torch_serialization", "pickle")
                info = mlflow.pytorch.log_model(
                    torch_model, serialization_format="pickle", **common
                )
        else:
            import mlflow.onnx
            import onnx
            import onnxruntime as ort

            onnx_file = exported.out / exported.files.get("onnx", exported.files["model"])
            signature = None
            if x is not None:
                session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
                feed = {session.get_inputs()[0].name: x.astype(np.float32)}
                signature = infer_signature(x, session.run(None, feed)[0])
            info = mlflow.onnx.log_model(
                onnx.load(str(onnx_file)),
                name="model",
                model_id=logged.model_id,
                run_id=run_id,
                signature=signature,
                input_example=x,
                pip_requirements=[
                    f"onnx=={metadata.version('onnx')}",
                    f"onnxruntime=={metadata.version('onnxruntime')}",
                ],
                registered_model_name=register,
            )
    tracker.client.finalize_logged_model(logged.model_id, "READY")
    out = {"model_uri": str(info.model_uri)}
    if register is not None and info.registered_model_version is not None:
        out["model_version"] = str(info.registered_model_version)
    return out
