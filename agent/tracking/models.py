"""Logging a model to MLflow: one policy for the search's best model and for an export.

**The policy.** A torch model is saved with ``torch.export`` (MLflow's ``pt2`` format). When it
cannot be (data-dependent control flow such as dynamic skip's gates, or inputs that are not one
tensor, e.g. a tokenizer's dict), the model is logged as the ONNX graph layerpilot measured
(``mlflow.onnx``; dynamic skip's gates as ``If`` nodes), tagged
``layerpilot.torch_serialization=onnx``. Nothing is ever pickled, because:

- loading a model runs no pickled code (``docs/design.md``: "No pickled code"), so a model from
  a shared store is safe to open;
- it needs no layerpilot on the loading side: a pickle refers to the classes that built the
  model (pruned wrappers, gated blocks) and breaks when they move or change;
- the ONNX fallback is the graph every figure of the run was measured on, so a run always
  carries a loadable model that matches its numbers.

The example is given with at least two rows: ``torch.export`` specialises a size-1 axis, so a
batch-1 example would pin the saved model's batch size to 1. The signature comes from one
forward pass on it; pip requirements are pinned from installed versions rather than inferred,
which would load the model in a subprocess. ONNX models (the ONNX and TensorRT exports) are
logged with ``mlflow.onnx`` under the same rules.

Each model is an MLflow 3 ``LoggedModel`` created here, in the run's experiment: left to
``log_model`` it would land in the process's "active" experiment (experiment 0 by default).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from agent.tracking.keys import SERIALIZATION_TAG
from agent.tracking.uri import using_tracking_uri

if TYPE_CHECKING:
    import numpy as np
    import torch
    from mlflow import MlflowClient

    from envs.workloads.inputs import Inputs

logger = logging.getLogger(__name__)

Serialization = Literal["pt2", "onnx"]

OnnxWriter = Callable[[Path], Path]
"""Writes a model's ONNX file into the given folder and returns its path."""


@dataclass(frozen=True)
class ModelLog:
    """Where a logged model went."""

    uri: str
    """Its model URI, ``models:/<model_id>``."""
    serialization: Serialization
    """How it was saved: ``pt2`` (``torch.export``) or ``onnx`` (an ONNX model, or the ONNX
    form of a torch model ``torch.export`` could not trace)."""
    version: str | None = None
    """Its Model Registry version, when it was registered."""


def log_torch_model(
    client: MlflowClient,
    tracking_uri: str,
    run_id: str,
    model: torch.nn.Module,
    example_input: Inputs,
    *,
    register: str | None = None,
    onnx_form: OnnxWriter | None = None,
) -> ModelLog:
    """Log ``model`` as the MLflow model ``model`` of ``run_id`` (see the module doc).

    Args:
        client: A client of ``tracking_uri``.
        tracking_uri: The store the run is in.
        run_id: The run the model belongs to.
        model: The model; it is put in eval mode.
        example_input: One input batch (tensor, tuple or dict of tensors).
        register: Also register it in the Model Registry under this name.
        onnx_form: Writes the ONNX form logged when ``torch.export`` cannot be used (default: the
            model's own export, `onnx_writer`); the search passes the graph it measured.
    """
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature

    model.eval()
    x = _example_rows(example_input)
    signature = None
    if x is not None:
        try:
            with torch.no_grad():
                y = model(torch.from_numpy(x))
            if isinstance(y, torch.Tensor):
                signature = infer_signature(x, y.detach().cpu().numpy())
        except Exception:  # a model without a signature is logged in its ONNX form
            signature = None

    def save(model_id: str) -> tuple[Any, Serialization]:
        info = mlflow.pytorch.log_model(
            model,
            serialization_format="pt2",
            model_id=model_id,
            name="model",
            run_id=run_id,
            signature=signature,
            input_example=x,
            pip_requirements=[f"torch=={metadata.version('torch')}"],
            registered_model_name=register,
        )
        return info, "pt2"

    logged = None
    if signature is not None:  # pt2 traces the example, so it needs both
        try:
            logged = _log(client, tracking_uri, run_id, save)
        except Exception as exc:  # data-dependent control flow (dynamic skip) does not trace
            logger.info("torch.export failed (%s); logging the model's ONNX form", exc)
    if logged is None:
        write = onnx_form or onnx_writer(model, example_input)
        with tempfile.TemporaryDirectory(prefix="layerpilot-model-") as tmp:
            path = write(Path(tmp))
            logged = log_onnx_model(
                client, tracking_uri, run_id, path, example_input, register=register
            )
    client.set_tag(run_id, SERIALIZATION_TAG, logged.serialization)
    return logged


def onnx_writer(model: torch.nn.Module, example_input: Inputs) -> OnnxWriter:
    """The ONNX export layerpilot measures a model by: an action's own exporter when one applies
    (dynamic skip's gates), else the TorchScript exporter (`runners.onnx_export.export_onnx`)."""

    def write(folder: Path) -> Path:
        from runners.onnx_export import export_onnx
        from search_spaces.actions import export_onnx as export_by_action

        path = folder / "model.onnx"
        return export_by_action(model, example_input, path) or export_onnx(
            model, example_input, path
        )

    return write


def log_onnx_model(
    client: MlflowClient,
    tracking_uri: str,
    run_id: str,
    onnx_file: Path,
    example_input: Inputs | None,
    *,
    register: str | None = None,
) -> ModelLog:
    """Log the ONNX model in ``onnx_file`` as the MLflow ONNX model ``model`` of ``run_id``.

    The signature comes from one ONNX Runtime (CPU) pass on the example.
    """
    import mlflow.onnx
    import numpy as np
    import onnx
    import onnxruntime as ort
    from mlflow.models import infer_signature

    x = _example_rows(example_input)
    signature = None
    if x is not None:
        session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x.astype(np.float32)}
        signature = infer_signature(x, session.run(None, feed)[0])

    def save(model_id: str) -> tuple[Any, Serialization]:
        info = mlflow.onnx.log_model(
            onnx.load(str(onnx_file)),
            name="model",
            model_id=model_id,
            run_id=run_id,
            signature=signature,
            input_example=x,
            pip_requirements=[
                f"onnx=={metadata.version('onnx')}",
                f"onnxruntime=={metadata.version('onnxruntime')}",
            ],
            registered_model_name=register,
        )
        return info, "onnx"

    return _log(client, tracking_uri, run_id, save)


def _log(
    client: MlflowClient,
    tracking_uri: str,
    run_id: str,
    save: Callable[[str], tuple[Any, Serialization]],
) -> ModelLog:
    experiment_id = client.get_run(run_id).info.experiment_id
    logged = client.create_logged_model(
        experiment_id=experiment_id, name="model", source_run_id=run_id
    )
    with _finalized(client, logged.model_id), using_tracking_uri(tracking_uri):
        info, serialization = save(logged.model_id)
    version = getattr(info, "registered_model_version", None)
    return ModelLog(
        uri=str(info.model_uri),
        serialization=serialization,
        version=None if version is None else str(version),
    )


@contextmanager
def _finalized(client: MlflowClient, model_id: str) -> Iterator[None]:
    # A LoggedModel left PENDING shows as "in progress" in the UI forever; one whose save failed
    # holds nothing (the error goes to the caller), so it is deleted. Each attempt needs its own:
    # log_model links the run to the model before saving, and a second link is refused.
    try:
        yield
    except BaseException:
        client.delete_logged_model(model_id)
        raise
    client.finalize_logged_model(model_id, "READY")


def _example_rows(example_input: Inputs | None) -> np.ndarray | None:
    import torch

    # MLflow's signature of a tuple/dict of inputs would not round-trip the call structure;
    # such models are logged without an input example (they still load and run).
    if not isinstance(example_input, torch.Tensor):
        return None
    x = example_input.detach().cpu().numpy()
    return x if x.shape[0] > 1 else x.repeat(2, axis=0)


__all__ = ["ModelLog", "OnnxWriter", "log_onnx_model", "log_torch_model", "onnx_writer"]
