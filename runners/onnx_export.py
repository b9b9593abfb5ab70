"""A candidate as the ONNX file every ONNX-based runtime deploys.

A candidate becomes an ONNX file in three steps, all in :func:`build_onnx`:

1. :func:`export_onnx` — the TorchScript exporter, which scopes every node name by the modules
   it ran in (``/layer1/layer1.0/conv1/Conv``), so
   :func:`runners.precision_map.module_of_onnx_node` maps nodes back to the module paths a
   strategy names (``layer1.0.conv1``). BatchNorm is folded into the preceding conv, and
   initializers with equal values are stored once.
2. int8 — :func:`runners.quantize.quantize_onnx`: QDQ, restricted to the nodes whose module is
   covered by an ``"int8"`` entry of ``candidate.precisions`` and calibrated on
   ``candidate.calibration``.
3. fp16 (GPU runtimes only) — :func:`runners.quantize.convert_fp16` on the covered nodes.

``runners/onnxruntime.py`` opens an ``InferenceSession`` on the result and
``runners/tensorrt.py`` builds an engine from the same file. ``onnx`` is imported inside
functions only.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from envs.workloads.inputs import Inputs, export_args, input_names
from runners.base import Candidate, UnsupportedPrecisionError, check_precisions
from runners.precision_map import check_entries_match
from runners.quantize import (
    ORT_CPU_INT8,
    Int8Scheme,
    check_calibration,
    convert_fp16,
    quantize_onnx,
)
from search_spaces.errors import PrecisionNotExportableError

OPSET = 17
"""ONNX opset of every export (LayerNormalization needs 17)."""
INPUT_NAME = "input"
"""The graph input of a single-tensor model (tuples: ``input_0..``; dicts: their keys)."""
OUTPUT_NAME = "output"


class OnnxExportError(RuntimeError):
    """The TorchScript ONNX exporter could not export a model (an op it has no ONNX form for,
    e.g. ``torch.fft``; control flow on tensor values; an output that is not a tensor)."""


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send file descriptor 1 to stderr: the exporter's C++ side prints the whole TorchScript
    graph on stdout when it fails, which would corrupt a ``--json`` answer."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no fd 1 (a closed stdout): nothing to protect
        yield
        return
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def export_onnx(model: nn.Module, example_input: Inputs, path: Path) -> Path:
    """Export ``model`` to ONNX with a dynamic batch axis, nodes named by module path.

    Uses the TorchScript exporter (``dynamo=False``) because it scopes node names by module
    (the dynamo exporter names them ``node_conv2d_2``); see
    :func:`runners.precision_map.module_of_onnx_node`. Runs without gradients and with the
    fused ``nn.MultiheadAttention`` fast path off (it does not export), restoring it afterwards.

    Args:
        model: An eval-mode model on CPU.
        example_input: A batch-1 input (tensor, tuple or dict of tensors, any dtype); each
            tensor becomes a graph input named by :func:`envs.workloads.inputs.input_names`,
            its batch axis exported as ``"batch"``.
        path: Where to write the ``.onnx`` file (parents are created).

    Returns:
        ``path``.

    Raises:
        OnnxExportError: The exporter failed; the message names the exporter's reason (the
            graph it prints on failure goes to stderr, never stdout).

    Example:
        >>> export_onnx(nn.Linear(4, 2).eval(), torch.randn(1, 4), tmp / "m.onnx")  # doctest: +SKIP
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    args, kwargs = export_args(example_input)
    names = input_names(example_input)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings(), torch.no_grad(), _stdout_to_stderr():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            # torch's own shape checks (inside nn.MultiheadAttention) warn while tracing; a
            # TracerWarning raised by the user's code still shows.
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"torch\.")
            torch.onnx.export(
                model,
                args,
                str(path),
                kwargs=kwargs,
                dynamo=False,
                opset_version=OPSET,
                input_names=names,
                output_names=[OUTPUT_NAME],
                dynamic_axes={**{n: {0: "batch"} for n in names}, OUTPUT_NAME: {0: "batch"}},
            )
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OnnxExportError(
            f"{type(model).__name__} does not export to ONNX (opset {OPSET}, TorchScript "
            f"exporter): {reason}. Every runtime layerpilot measures on loads that ONNX file: "
            "replace the op with one the exporter supports, or keep it outside the model"
        ) from exc
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return path


@dataclass(frozen=True)
class OnnxArtifact:
    """The ONNX file a runtime loads, and what was done to it."""

    path: Path
    """The final ``.onnx`` (fp32, or with Q/DQ nodes and fp16 casts applied)."""
    int8_nodes: tuple[str, ...] = ()
    """Names of the compute nodes that run in int8 (fed by a ``DequantizeLinear``)."""
    fp16_nodes: tuple[str, ...] = ()
    """Names of the nodes converted to fp16."""


def build_onnx(
    candidate: Candidate,
    workdir: Path,
    *,
    supported: frozenset[str] = frozenset({"fp32", "int8"}),
    runtime: str = "onnxruntime-cpu",
    int8: Int8Scheme = ORT_CPU_INT8,
) -> OnnxArtifact:
    """Export ``candidate`` and apply its precisions: the ONNX file a runtime deploys.

    Files under ``workdir``: ``model.onnx`` (export), and when asked ``model.pre.onnx``
    (quantization pre-processing), ``model.int8.onnx`` (QDQ) and ``model.fp16.onnx``.

    Args:
        candidate: The built model, its example input, precisions and calibration inputs.
        workdir: Directory for the files (created).
        supported: Precisions the calling runtime executes.
        runtime: Its name, for error messages.
        int8: The Q/DQ form the runtime's int8 kernels accept.

    Raises:
        UnsupportedPrecisionError: A precision outside ``supported`` is asked for.
        MissingCalibrationError: int8 without calibration inputs.
        PrecisionMappingError: A precision entry matches no node of the exported graph.
    """
    check_precisions(candidate.precisions, supported, runtime)
    check_calibration(candidate)
    workdir = Path(workdir)
    precisions = candidate.precisions
    own = _export_by_action(candidate, workdir / "model.onnx")
    if own is not None:  # an action's own exporter (dynamic skip: gates as If nodes)
        return OnnxArtifact(own)
    path = export_onnx(candidate.model, candidate.example_input, workdir / "model.onnx")
    if not any(p != "fp32" for p in precisions.values()):
        return OnnxArtifact(path)

    import onnx

    check_entries_match([n.name for n in onnx.load(str(path)).graph.node], precisions)
    int8_nodes: tuple[str, ...] = ()
    fp16_nodes: tuple[str, ...] = ()
    if "int8" in precisions.values():
        assert candidate.calibration is not None  # check_calibration made sure
        path, int8_nodes = quantize_onnx(
            path, workdir / "model.int8.onnx", precisions, candidate.calibration, int8
        )
    if "fp16" in precisions.values():
        path, fp16_nodes = convert_fp16(path, workdir / "model.fp16.onnx", precisions)
    return OnnxArtifact(path, int8_nodes, fp16_nodes)


def _export_by_action(candidate: Candidate, path: Path) -> Path | None:
    """The file an action's own exporter wrote for the candidate, or ``None`` (the default
    export serves); per-unit precisions it cannot apply raise `UnsupportedPrecisionError`."""
    from search_spaces.actions import export_onnx as export_by_action

    try:
        return export_by_action(
            candidate.model,
            candidate.example_input,
            path,
            precisions=candidate.precisions,
            input_name=INPUT_NAME,
            output_name=OUTPUT_NAME,
            opset=OPSET,
        )
    except PrecisionNotExportableError as exc:
        raise UnsupportedPrecisionError(str(exc)) from exc


def onnx_size_bytes(path: Path) -> int:
    """Bytes of an ONNX file plus any external-data files it references."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    external = {
        entry.value
        for tensor in model.graph.initializer
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }
    return path.stat().st_size + sum((path.parent / f).stat().st_size for f in external)
