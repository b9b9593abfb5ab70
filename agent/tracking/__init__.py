"""Every MLflow call of layerpilot: one parent run per search, one nested run per candidate.

One concern per module:

- :mod:`~agent.tracking.uri` — where the store is (default URI, artifact root, artifact reads);
- :mod:`~agent.tracking.keys` — the tag/param/artifact names and MLflow-safe values;
- :mod:`~agent.tracking.writer` — :class:`Tracker`, the driver's only writer;
- :mod:`~agent.tracking.models` — the one model-logging policy (``torch.export``, the measured
  ONNX graph for a model that does not trace, never a pickle; ONNX for the ONNX formats);
- :mod:`~agent.tracking.export_log` — :func:`log_export`, an export as its own run;
- :mod:`~agent.tracking.readers` — a search read back: runs, baseline, setup, records.

Layout of a search in MLflow::

    experiment "layerpilot"             (tag mlflow.experimentKind=custom_model_development)
      run <search name>                 params: config, workload.*; metrics: baseline_*, summary
                                        artifact: eval_spec.json (how candidates were measured)
        run cand-0000 ... cand-NNNN     params: <unit>.<action>, source, cached, extra:*
                                        metrics: EvalResult.metrics(), reward, eval_seconds
                                        artifacts: strategy.json, result.json (the full result)
                                        tag pareto=true on the front; the best carries a model
        run export-<format>             an export of one candidate, with its model

Example:
    >>> tracker = Tracker(workdir=tmp_path)  # doctest: +SKIP
    >>> tracker.start_search("ppo-digits", config, workload, baseline, search_dir)  # doctest: +SKIP
    >>> for record in records:  # doctest: +SKIP
    ...     tracker.log_candidate(record)
    >>> tracker.finish_search({"hypervolume": 41.2}, "FINISHED")  # doctest: +SKIP
"""

from __future__ import annotations

from agent.tracking.export_log import log_export
from agent.tracking.keys import (
    BASELINE_PREFIX,
    DEFAULT_UNIT_PARAM,
    ERROR_TAG,
    EVAL_SPEC_ARTIFACT,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    EXTRA_PARAM_PREFIX,
    PARENT_RUN_TAG,
    PARETO_TAG,
    RESULT_ARTIFACT,
    SEARCH_DIR_TAG,
    STRATEGY_ARTIFACT,
    flatten,
    machine_tags,
    param_key,
    strategy_params,
)
from agent.tracking.models import ModelLog, log_onnx_model, log_torch_model
from agent.tracking.readers import (
    baseline_from_run,
    load_eval_spec,
    load_run,
    load_search,
    load_search_runs,
    records_from_runs,
)
from agent.tracking.uri import artifact_root, default_tracking_uri
from agent.tracking.writer import RunStatus, Tracker

__all__ = [
    "BASELINE_PREFIX",
    "DEFAULT_UNIT_PARAM",
    "ERROR_TAG",
    "EVAL_SPEC_ARTIFACT",
    "EXPERIMENT_KIND",
    "EXPERIMENT_KIND_TAG",
    "EXTRA_PARAM_PREFIX",
    "PARENT_RUN_TAG",
    "PARETO_TAG",
    "RESULT_ARTIFACT",
    "SEARCH_DIR_TAG",
    "STRATEGY_ARTIFACT",
    "ModelLog",
    "RunStatus",
    "Tracker",
    "artifact_root",
    "baseline_from_run",
    "default_tracking_uri",
    "flatten",
    "load_eval_spec",
    "load_run",
    "load_search",
    "load_search_runs",
    "log_export",
    "log_onnx_model",
    "log_torch_model",
    "machine_tags",
    "param_key",
    "records_from_runs",
    "strategy_params",
]
