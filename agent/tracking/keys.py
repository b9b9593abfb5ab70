"""The names layerpilot gives things in MLflow, and values cleaned to fit MLflow's limits.

Every tag, param prefix and artifact name that a writer sets and a reader looks for is defined
here once, so the two cannot drift apart. The helpers turn arbitrary values into legal keys,
param strings and metric entities (MLflow rejects characters, long values and non-finite
metrics; see ``mlflow.utils.validation``).
"""

from __future__ import annotations

import json
import math
import os
import platform
import posixpath
import re
import time
from collections.abc import Mapping
from importlib import metadata
from typing import Any

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
"""Makes the MLflow 3 UI open the experiment on its runs table instead of the GenAI overview."""
PARENT_RUN_TAG = "mlflow.parentRunId"
KIND_TAG = "layerpilot.kind"
"""``search``, ``candidate`` or ``export``."""
INDEX_TAG = "layerpilot.index"
"""A candidate run's 0-based position in its search."""
SEARCH_DIR_TAG = "layerpilot.search_dir"
SERIALIZATION_TAG = "layerpilot.torch_serialization"
"""How a run's model was saved: ``pt2`` (``torch.export``) or ``onnx`` (a model that does not
trace, as the ONNX graph it was measured on). Never a pickle."""
FIDELITY_TAG = "layerpilot.fidelity"
"""A candidate run's recovery level (``none``, ``short``, ``full``): the accuracy it logs is the
model's after that recovery."""
ESTIMATED_TAG = "layerpilot.estimated"
"""``true`` when the run's ``deployed_drop`` and ``reward`` are estimated from a cheaper
fidelity."""
PARETO_TAG = "pareto"
ERROR_TAG = "error"
SUMMARY_TAG = "layerpilot.summary"
"""A candidate run's strategy on one line (``layer1.0: skip; conv1: prune=0.5``)."""
DOUBT_TAG = "layerpilot.latency_doubts"
"""Set on a candidate run whose speedup may be off (`EvalResult.latency_doubts`, joined by
``; ``): above the FLOP-ideal, or an unstable timing on either side."""
MODEL_NOT_LOGGED_TAG = "layerpilot.model_not_logged"
"""Why a run that should carry a model does not (its rebuild or logging failed)."""
NOTE_TAG = "mlflow.note.content"
"""The run description the MLflow UI shows (markdown)."""
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
"""Experiment tags holding a saved runs-table view, opened with ``?viewStateShareKey=<id>``."""
SEARCH_STAT_PREFIX = "layerpilot.search."
"""Parent-run tags of the search's bookkeeping figures (wall and eval seconds, iterations):
tags, so the metric charts show only what candidates are compared on."""
HEADLINE_METRICS = ("best_speedup_at_1pt", "hypervolume", "candidates", "failed")
"""The parent run's summary figures logged as metrics; the rest are `SEARCH_STAT_PREFIX`
tags."""
AGGREGATE_PREFIX = "units:"
"""Candidate params counting the units each action is set on (``units:prune``) and, for a
numeric action, its mean value (``units:prune.mean``); the colon keeps them apart from the
``<unit>.<action>`` params (no module name holds one)."""
STRATEGY_ARTIFACT = "strategy.json"
RESULT_ARTIFACT = "result.json"
"""A candidate run's full measured result (``EvalResult.to_dict()``): the exact record."""
EVAL_SPEC_ARTIFACT = "eval_spec.json"
"""A search's parent-run copy of its ``EvalSpec.to_dict()``: how every candidate was measured."""
DEFAULT_UNIT_PARAM = "_default"
"""Param prefix standing for the strategy's ``"*"`` unit (``*`` is not a legal MLflow key)."""
BASELINE_PREFIX = "baseline_"
"""Parent-run metric prefix of the baseline measurement (``baseline_accuracy``)."""
EXTRA_PARAM_PREFIX = "extra:"
"""Param prefix of a record's scalar extras (``extra:lam``); no module name holds a colon."""
RUN_METRICS = ("reward", "eval_seconds", "deployed_drop")
"""Metrics of a candidate run that are the search's, not the measured result's."""

# MLflow's limits (mlflow.utils.validation): keys, param values, tag values.
MAX_KEY = 250
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
_BAD_KEY_CHARS = re.compile(r"[^\w./\- :]")


def param_key(name: str) -> str:
    """``name`` made into a legal MLflow param/metric/tag key.

    Characters MLflow refuses become ``_``, and names that would not be unique as file paths
    (``a//b``, ``../x``) are flattened.

    Example:
        >>> param_key("layer1.0.conv1.prune"), param_key("blocks[0]/../fc")
        ('layer1.0.conv1.prune', 'blocks_0__.._fc')
    """
    key = _BAD_KEY_CHARS.sub("_", name)[: MAX_KEY - 1] or "_"
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
            params[param_key(f"{unit_name}.{action}")] = param_value(value)
    return params


def strategy_aggregates(strategy_dict: Mapping[str, Any]) -> dict[str, str]:
    """Per action: how many units set it, and the mean of a numeric (non-boolean) value.

    Example:
        >>> units = {"a": {"prune": 0.5, "skip": True}, "b": {"prune": 0.25}}
        >>> strategy_aggregates({"units": units})
        {'units:prune': '2', 'units:prune.mean': '0.375', 'units:skip': '1'}
    """
    values: dict[str, list[Any]] = {}
    for unit, actions in strategy_dict.get("units", {}).items():
        if unit == "*":
            continue
        for action, value in actions.items():
            values.setdefault(action, []).append(value)
    params: dict[str, str] = {}
    for action, found in sorted(values.items()):
        params[param_key(f"{AGGREGATE_PREFIX}{action}")] = str(len(found))
        numbers = [v for v in found if isinstance(v, int | float) and not isinstance(v, bool)]
        if numbers and len(numbers) == len(found):
            mean = sum(numbers) / len(numbers)
            params[param_key(f"{AGGREGATE_PREFIX}{action}.mean")] = f"{mean:.4g}"
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
            flat[param_key(name)] = param_value(value)
    return flat


def parse_param(text: str) -> Any:
    """The inverse of :func:`param_value` for scalars: ``"True"``, ``"3"``, ``"0.5"``, text.

    A string that reads as a number comes back as that number: params do not keep the type.

    Example:
        >>> parse_param("True"), parse_param("8"), parse_param("0.5"), parse_param("int8")
        (True, 8, 0.5, 'int8')
    """
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


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


def metric_entities(values: Mapping[str, Any], timestamp: int) -> list[Any]:
    """``mlflow.entities.Metric`` s of the finite, non-boolean numbers in ``values``."""
    from mlflow.entities import Metric

    return [
        Metric(param_key(key), float(value), timestamp, 0)
        for key, value in values.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ]


def param_value(value: Any) -> str:
    """``value`` as a param string: text as is, scalars by ``str``, the rest as JSON; capped."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, bool | int | float) or value is None:
        text = str(value)
    else:
        text = json.dumps(value, sort_keys=True, default=str)
    return truncate(text, MAX_PARAM_VALUE)


def truncate(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, ending in a visible ``…[truncated]`` marker."""
    marker = "…[truncated]"
    return text if len(text) <= limit else text[: limit - len(marker)] + marker


def int_or(text: str | None, default: int) -> int:
    """``int(text)``, or ``default`` when ``text`` is missing or not an integer."""
    try:
        return int(text) if text is not None else default
    except ValueError:
        return default


def now_ms() -> int:
    """The current time as MLflow stores it (milliseconds since the epoch)."""
    return int(time.time() * 1000)


__all__ = [
    "AGGREGATE_PREFIX",
    "BASELINE_PREFIX",
    "DEFAULT_UNIT_PARAM",
    "DOUBT_TAG",
    "ERROR_TAG",
    "EVAL_SPEC_ARTIFACT",
    "EXPERIMENT_KIND",
    "EXPERIMENT_KIND_TAG",
    "EXTRA_PARAM_PREFIX",
    "HEADLINE_METRICS",
    "INDEX_TAG",
    "KIND_TAG",
    "MODEL_NOT_LOGGED_TAG",
    "NOTE_TAG",
    "PARENT_RUN_TAG",
    "PARETO_TAG",
    "RESULT_ARTIFACT",
    "RUN_METRICS",
    "SEARCH_DIR_TAG",
    "SEARCH_STAT_PREFIX",
    "SERIALIZATION_TAG",
    "STRATEGY_ARTIFACT",
    "SUMMARY_TAG",
    "VIEW_TAG_PREFIX",
    "flatten",
    "machine_tags",
    "metric_entities",
    "param_key",
    "param_value",
    "parse_param",
    "strategy_aggregates",
    "strategy_params",
]
