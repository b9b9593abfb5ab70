"""`log_export`: an exported candidate as its own MLflow run, nested under its search."""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.tracking.keys import (
    EXTRA_PARAM_PREFIX,
    KIND_TAG,
    PARENT_RUN_TAG,
    flatten,
    machine_tags,
    metric_entities,
    now_ms,
    param_key,
    param_value,
    strategy_params,
)
from agent.tracking.models import ModelLog, log_onnx_model, log_torch_model
from agent.tracking.writer import Tracker

if TYPE_CHECKING:
    import torch

    from envs.workloads.inputs import Inputs
    from runners.export import ExportedModel


def log_export(
    exported: ExportedModel,
    *,
    tracking_uri: str,
    parent_run_id: str | None = None,
    experiment: str = "layerpilot",
    register: str | None = None,
    example_input: Inputs | None = None,
    torch_model: torch.nn.Module | None = None,
) -> dict[str, str]:
    """Log an export as its own run (nested under the search's parent run when known).

    The run holds the export's figures as metrics, ``report.md``, ``strategy.json`` and
    ``export.json`` as artifacts, and the model as an MLflow model with an input example and a
    signature (:mod:`agent.tracking.models`): ``mlflow.onnx`` for the ONNX formats (TensorRT
    logs the ONNX its engine was built from, plus the engine as an artifact), ``mlflow.pytorch``
    for ``torch`` (``torch.export``'d, or its ONNX form when it does not trace: loading it never
    unpickles code). ``register`` adds it to
    the Model Registry under that name.

    Returns ``run_id``, ``model_uri`` and, when registered, ``model_version``.

    Raises:
        ValueError: A ``torch`` export was given without its ``torch_model`` or
            ``example_input``.
    """
    from mlflow import MlflowClient
    from mlflow.entities import Param

    if exported.format == "torch" and (torch_model is None or example_input is None):
        raise ValueError(
            "a torch export is logged with its model and an example input: pass torch_model= "
            "and example_input="
        )
    client = MlflowClient(tracking_uri)
    if parent_run_id is not None:
        experiment = client.get_experiment(client.get_run(parent_run_id).info.experiment_id).name
    tracker = Tracker(tracking_uri, experiment)
    tags = {
        KIND_TAG: "export",
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
        metrics=metric_entities(exported.summary(), timestamp=now_ms()),
        params=[Param(param_key(k), param_value(v)) for k, v in params.items()],
    )
    for role in ("report", "strategy"):
        tracker.client.log_artifact(run_id, str(exported.out / exported.files[role]))
    tracker.client.log_artifact(run_id, str(exported.out / "export.json"))
    if exported.format == "tensorrt":
        tracker.client.log_artifact(run_id, str(exported.out / exported.files["model"]))
    logged: ModelLog
    if torch_model is not None and example_input is not None and exported.format == "torch":
        logged = log_torch_model(
            tracker.client, tracking_uri, run_id, torch_model, example_input, register=register
        )
    else:
        onnx_file = exported.out / exported.files.get("onnx", exported.files["model"])
        logged = log_onnx_model(
            tracker.client, tracking_uri, run_id, onnx_file, example_input, register=register
        )
    tracker.client.set_terminated(run_id, "FINISHED")
    out = {"run_id": run_id, "model_uri": logged.uri}
    if register is not None and logged.version is not None:
        out["model_version"] = logged.version
    return out


__all__ = ["log_export"]
