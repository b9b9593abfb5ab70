"""ONNX Runtime: the export and quantization every ONNX-based runtime shares, and its runtimes.

A candidate becomes an ONNX file in three steps, all in :func:`build_onnx`:

1. :func:`export_onnx` — the TorchScript exporter, which scopes every node name by the modules
   it ran in (``/layer1/layer1.0/conv1/Conv``), so :func:`runners.base.module_of_onnx_node` maps
   nodes back to the module paths a strategy names (``layer1.0.conv1``). BatchNorm is folded
   into the preceding conv, and initializers with equal values are stored once.
2. int8 — ``quant_pre_process`` then ``quantize_static`` in the QDQ format, restricted to the
   nodes whose module is covered by an ``"int8"`` entry of ``candidate.precisions`` and
   calibrated on ``candidate.calibration``.
3. fp16 (GPU runtimes only) — ``convert_float_to_float16`` on the covered nodes, float32 I/O.

:class:`OnnxRuntimeCPU` (the default runtime) and :class:`OnnxRuntimeCUDA` then open an
``InferenceSession`` on the result; ``runners/tensorrt.py`` builds an engine from the same file.
``onnxruntime`` itself is imported inside functions only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from runners.base import (
    Candidate,
    RuntimeUnavailableError,
    UnsupportedPrecisionError,
    check_precisions,
    covered_by,
    module_of_onnx_node,
)
from runners.latency import cpu_model
from search_spaces.dynamic import DynamicSkipModel

if TYPE_CHECKING:
    import onnx

logger = logging.getLogger(__name__)

OPSET = 17
"""ONNX opset of every export (LayerNormalization needs 17)."""
INPUT_NAME = "input"
OUTPUT_NAME = "output"
CALIBRATION_BATCH = 32
"""Samples per calibration batch (the exported batch axis is dynamic)."""
_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


class PrecisionMappingError(ValueError):
    """A precision entry names a module that no node of the exported graph belongs to."""


class MissingCalibrationError(ValueError):
    """int8 was asked for, but the candidate carries no (usable) calibration inputs."""


@dataclass(frozen=True)
class Int8Scheme:
    """How int8 Q/DQ nodes are made: what the target runtime's int8 kernels accept."""

    activation_type: str = "QUInt8"
    """``"QUInt8"`` or ``"QInt8"`` (weights are always per-channel, symmetric ``QInt8``)."""
    symmetric_activations: bool = False
    """Activation zero point fixed at 0 (TensorRT accepts only that)."""

    def __post_init__(self) -> None:
        if self.activation_type not in ("QUInt8", "QInt8"):
            raise ValueError(
                f"activation_type must be 'QUInt8' or 'QInt8', got {self.activation_type!r}"
            )


ORT_CPU_INT8 = Int8Scheme("QUInt8", symmetric_activations=False)
"""ONNX Runtime CPU: unsigned asymmetric activations (U8S8), chosen by measurement. On a 2-core
AVX-512 VNNI Xeon, 1 thread, batch 1, all-int8 QDQ (ORT 1.32): a ResNet-18-style net on
3×32×32 ran fp32 7.9 ms, U8S8 2.2 ms, S8S8 7.0 ms; a 4-layer d=256 transformer encoder ran
fp32 3.4 ms, U8S8 2.2 ms, S8S8 9.3 ms (slower than fp32). Outputs were identical: with a zero
point both are the same 256-level asymmetric grid, so only the kernels differ."""
TENSORRT_INT8 = Int8Scheme("QInt8", symmetric_activations=True)
"""TensorRT: signed int8 with zero point 0 for activations and weights (its only Q/DQ form)."""


# ----------------------------------------------------------------------------------------------
# export


def export_onnx(model: nn.Module, example_input: torch.Tensor, path: Path) -> Path:
    """Export ``model`` to ONNX with a dynamic batch axis, nodes named by module path.

    Uses the TorchScript exporter (``dynamo=False``) because it scopes node names by module
    (the dynamo exporter names them ``node_conv2d_2``); see
    :func:`runners.base.module_of_onnx_node`. Runs without gradients and with the
    fused ``nn.MultiheadAttention`` fast path off (it does not export), restoring it afterwards.

    Args:
        model: An eval-mode model on CPU.
        example_input: A batch-1 input; the batch axis is exported as ``"batch"``.
        path: Where to write the ``.onnx`` file (parents are created).

    Returns:
        ``path``.

    Example:
        >>> export_onnx(nn.Linear(4, 2).eval(), torch.randn(1, 4), tmp / "m.onnx")  # doctest: +SKIP
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            # torch's own shape checks (inside nn.MultiheadAttention) warn while tracing; a
            # TracerWarning raised by the user's code still shows.
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"torch\.")
            torch.onnx.export(
                model,
                (example_input.detach().cpu(),),
                str(path),
                dynamo=False,
                opset_version=OPSET,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return path


# ----------------------------------------------------------------------------------------------
# precision plan -> ONNX


@dataclass(frozen=True)
class OnnxArtifact:
    """The ONNX file a runtime loads, and what was done to it."""

    path: Path
    """The final ``.onnx`` (fp32, or with Q/DQ nodes and fp16 casts applied)."""
    int8_nodes: tuple[str, ...] = ()
    """Names of the compute nodes that run in int8 (fed by a ``DequantizeLinear``)."""
    fp16_nodes: tuple[str, ...] = ()
    """Names of the nodes converted to fp16."""


def check_calibration(candidate: Candidate) -> None:
    """Raise :class:`MissingCalibrationError` if int8 is asked for without usable calibration."""
    if "int8" not in candidate.precisions.values():
        return
    calibration = candidate.calibration
    int8 = sorted(m for m, p in candidate.precisions.items() if p == "int8")
    sample_shape = tuple(candidate.example_input.shape[1:])
    if calibration is None or len(calibration) == 0:
        raise MissingCalibrationError(
            f"int8 for {int8} needs calibration inputs: set Candidate.calibration to a batch of "
            f"representative inputs shaped (N, {', '.join(map(str, sample_shape))}), e.g. a "
            f"hundred training samples."
        )
    if tuple(calibration.shape[1:]) != sample_shape:
        raise MissingCalibrationError(
            f"calibration inputs have shape {tuple(calibration.shape)}, but each sample must be "
            f"shaped like the example input's {sample_shape}"
        )


def nodes_covered(
    graph_nodes: list[str], precisions: Mapping[str, str], precision: str
) -> list[str]:
    """Names of the nodes whose module is covered (longest prefix) by a ``precision`` entry."""
    chosen = []
    for name in graph_nodes:
        entry = covered_by(module_of_onnx_node(name), dict(precisions))
        if entry is not None and precisions[entry] == precision:
            chosen.append(name)
    return chosen


def _check_entries_match(graph_nodes: list[str], precisions: Mapping[str, str]) -> None:
    modules = {module_of_onnx_node(n) for n in graph_nodes}
    for entry in sorted(precisions):
        if entry and not any(m == entry or m.startswith(entry + ".") for m in modules):
            known = sorted(m for m in modules if m)
            raise PrecisionMappingError(
                f"precision entry {entry!r} ({precisions[entry]}) matches no node of the exported "
                f"ONNX graph; name a module that computes something in the graph (BatchNorm is "
                f"folded into its conv, so name the conv or the block). Modules in the graph: "
                f"{', '.join(known[:20])}{' …' if len(known) > 20 else ''}"
            )


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
    if candidate.input_dependent:
        return OnnxArtifact(_export_gated(candidate, workdir / "model.onnx"))
    path = export_onnx(candidate.model, candidate.example_input, workdir / "model.onnx")
    if not any(p != "fp32" for p in precisions.values()):
        return OnnxArtifact(path)

    import onnx

    _check_entries_match([n.name for n in onnx.load(str(path)).graph.node], precisions)
    int8_nodes: tuple[str, ...] = ()
    fp16_nodes: tuple[str, ...] = ()
    if "int8" in precisions.values():
        assert candidate.calibration is not None  # check_calibration made sure
        path, int8_nodes = quantize_onnx(
            path, workdir / "model.int8.onnx", precisions, candidate.calibration, int8
        )
    if "fp16" in precisions.values():
        path, fp16_nodes = _convert_fp16(path, workdir / "model.fp16.onnx", precisions)
    return OnnxArtifact(path, int8_nodes, fp16_nodes)


def _export_gated(candidate: Candidate, path: Path) -> Path:
    from runners.onnx_gated import export_gated_onnx

    lowered = sorted(m for m, p in candidate.precisions.items() if p != "fp32")
    if lowered:
        raise UnsupportedPrecisionError(
            f"a dynamic-skip model runs fp32 only, but {', '.join(lowered)} asked for "
            f"{sorted(set(candidate.precisions.values()) - {'fp32'})}: per-unit precision reads "
            f"TorchScript node names, and the If-node export comes from the dynamo exporter"
        )
    model = candidate.model
    assert isinstance(model, DynamicSkipModel)
    return export_gated_onnx(
        model,
        candidate.example_input,
        path,
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        opset=OPSET,
    )


def quantize_onnx(
    source: Path,
    target: Path,
    precisions: Mapping[str, str],
    calibration: torch.Tensor,
    scheme: Int8Scheme = ORT_CPU_INT8,
) -> tuple[Path, tuple[str, ...]]:
    """Static QDQ int8 quantization of the nodes covered by ``"int8"`` entries of ``precisions``.

    ``quant_pre_process`` (shape inference + ORT's basic graph optimisation) runs first; its
    symbolic shape inference fails on some attention graphs with a dynamic batch, and then the
    step is retried without it (ONNX shape inference still runs). The include list is computed on
    the pre-processed graph, so it holds only names that exist there (the optimisation keeps the
    exporter's names but constant-folds some nodes away). Weights are per-channel symmetric int8,
    activations as ``scheme`` says, calibrated by min/max over ``calibration``.

    Returns:
        ``target`` and the names of the nodes that now run in int8.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = source.with_name(source.stem + ".pre.onnx")
    with _no_implicit_root_handler():
        try:
            quant_pre_process(str(source), str(pre))
        except Exception as exc:  # ORT raises bare AssertionError/Exception from shape inference
            logger.info("symbolic shape inference failed (%r); pre-processing without it", exc)
            quant_pre_process(str(source), str(pre), skip_symbolic_shape=True)

    nodes = [n.name for n in onnx.load(str(pre)).graph.node]
    include = nodes_covered(nodes, precisions, "int8")
    if not include:
        raise PrecisionMappingError(
            f"no node left to quantize for int8 entries "
            f"{sorted(m for m, p in precisions.items() if p == 'int8')} after pre-processing"
        )

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            data = np.ascontiguousarray(calibration.detach().cpu().float().numpy())
            self._batches: Iterator[dict[str, np.ndarray]] = iter(
                {INPUT_NAME: data[i : i + CALIBRATION_BATCH]}
                for i in range(0, len(data), CALIBRATION_BATCH)
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    with _no_implicit_root_handler():
        quantize_static(
            str(pre),
            str(target),
            _Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=getattr(QuantType, scheme.activation_type),
            weight_type=QuantType.QInt8,
            nodes_to_quantize=include,
            extra_options={
                "ActivationSymmetric": scheme.symmetric_activations,
                "WeightSymmetric": True,
            },
        )
    return target, tuple(int8_node_names(onnx.load(str(target)), include))


@contextlib.contextmanager
def _no_implicit_root_handler() -> Iterator[None]:
    """Keep ORT's quantizer from configuring the process's logging.

    It logs with ``logging.warning(...)`` on the root logger (e.g. per-channel falling back to
    per-tensor for a LayerNorm weight), which installs a stderr handler on the root when it has
    none. A temporary ``NullHandler`` prevents that; an application's own handlers still see
    the records.
    """
    root = logging.getLogger()
    if root.handlers:
        yield
        return
    handler = logging.NullHandler()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)


def int8_node_names(model: onnx.ModelProto, include: list[str]) -> list[str]:
    """Nodes of ``include`` that the quantizer wrapped: an input comes from a DequantizeLinear.

    Only ``include`` counts, because a quantized node's output Q/DQ pair also feeds its fp32
    consumers.
    """
    dequantized = {
        out for n in model.graph.node if n.op_type == "DequantizeLinear" for out in n.output
    }
    wanted = set(include)
    return [
        n.name
        for n in model.graph.node
        if n.name in wanted and any(i in dequantized for i in n.input)
    ]


def _convert_fp16(
    source: Path, target: Path, precisions: Mapping[str, str]
) -> tuple[Path, tuple[str, ...]]:
    import onnx

    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError:  # older onnxruntime wheels
        from onnxconverter_common.float16 import convert_float_to_float16

    model = onnx.load(str(source))
    nodes = [n.name for n in model.graph.node]
    fp16 = set(nodes_covered(nodes, precisions, "fp16"))
    op_of = {n.name: n.op_type for n in model.graph.node}
    fp16 -= {n for n in fp16 if op_of[n] in _QDQ_OPS}  # int8 Q/DQ keep their float32 scales
    converted = convert_float_to_float16(
        model, keep_io_types=True, node_block_list=[n for n in nodes if n not in fp16]
    )
    onnx.save(converted, str(target))
    return target, tuple(n for n in nodes if n in fp16)


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


# ----------------------------------------------------------------------------------------------
# runtimes


@dataclass
class OrtCompiled:
    """A candidate loaded in an ONNX Runtime session (implements ``Compiled``)."""

    runtime: str
    size_bytes: int
    """Bytes of the final ``.onnx`` (external data included)."""
    info: dict[str, object]
    """threads, provider, onnxruntime version, onnx path, int8 node count, CPU model."""
    onnx_path: Path
    """The file the session runs."""
    session: Any = field(repr=False)
    """The ``onnxruntime.InferenceSession``."""

    def run(self, inputs: np.ndarray) -> np.ndarray:
        """Run one batch (any batch size) and return the output as float32."""
        feed = {INPUT_NAME: np.ascontiguousarray(inputs, dtype=np.float32)}
        return np.asarray(self.session.run([OUTPUT_NAME], feed)[0], dtype=np.float32)


def _open_session(path: Path, threads: int, providers: list[Any]) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Denormal weights/activations (common after fine-tuning) slow x86 kernels by tens of %.
    options.add_session_config_entry("session.set_denormal_as_zero", "1")
    return ort.InferenceSession(str(path), options, providers=providers)


def _compile(
    candidate: Candidate,
    workdir: Path,
    *,
    runtime: str,
    supported: frozenset[str],
    threads: int,
    providers: list[Any],
) -> OrtCompiled:
    import onnxruntime as ort

    artifact = build_onnx(candidate, workdir, supported=supported, runtime=runtime)
    session = _open_session(artifact.path, threads, providers)
    info: dict[str, object] = {
        "threads": threads,
        "provider": session.get_providers()[0],
        "onnxruntime": ort.__version__,
        "onnx_path": str(artifact.path),
        "int8_nodes": len(artifact.int8_nodes),
        "fp16_nodes": len(artifact.fp16_nodes),
    }
    if (cpu := cpu_model()) is not None:
        info["cpu"] = cpu
    return OrtCompiled(
        runtime=runtime,
        size_bytes=onnx_size_bytes(artifact.path),
        info=info,
        onnx_path=artifact.path,
        session=session,
    )


def _check_threads(threads: int) -> None:
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")


@dataclass(frozen=True)
class OnnxRuntimeCPU:
    """ONNX Runtime on CPU: fp32, and int8 as QDQ (the default runtime).

    Example:
        >>> compiled = OnnxRuntimeCPU(threads=1).compile(candidate, tmp)  # doctest: +SKIP
        >>> compiled.run(x.numpy()).shape  # doctest: +SKIP
    """

    threads: int = 1
    """Intra-op threads (inter-op is 1, sequential execution): fixed and recorded."""
    name: str = field(default="onnxruntime-cpu", init=False)
    precisions: frozenset[str] = field(default=frozenset({"fp32", "int8"}), init=False)

    def __post_init__(self) -> None:
        _check_threads(self.threads)

    def unavailable_reason(self) -> str | None:
        """``None`` when ``onnxruntime`` imports (it always runs on CPU)."""
        try:
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            return f"onnxruntime is not installed ({exc}); pip install onnxruntime"
        return None

    def compile(self, candidate: Candidate, workdir: Path) -> OrtCompiled:
        """Export, quantize the int8 modules, and open a CPU session."""
        if (reason := self.unavailable_reason()) is not None:
            raise RuntimeUnavailableError(f"{self.name}: {reason}")
        return _compile(
            candidate,
            workdir,
            runtime=self.name,
            supported=self.precisions,
            threads=self.threads,
            providers=["CPUExecutionProvider"],
        )


@dataclass(frozen=True)
class OnnxRuntimeCUDA:
    """ONNX Runtime with the CUDA execution provider (``onnxruntime-gpu``).

    fp16 modules are converted in the graph (float32 I/O); int8 runs the QDQ graph, which the
    CUDA provider executes by dequantizing to float (a correctness path, rarely faster — use
    ``tensorrt`` for real int8 kernels). Each ``run`` copies the batch host -> device -> host, and
    that copy is part of the measured latency.
    """

    threads: int = 1
    """Intra-op threads for the nodes that fall back to CPU."""
    device_id: int = 0
    """CUDA device index."""
    name: str = field(default="onnxruntime-cuda", init=False)
    precisions: frozenset[str] = field(default=frozenset({"fp32", "int8", "fp16"}), init=False)

    def __post_init__(self) -> None:
        _check_threads(self.threads)
        if self.device_id < 0:
            raise ValueError(f"device_id must be >= 0, got {self.device_id}")

    def unavailable_reason(self) -> str | None:
        """Why the CUDA provider cannot run here, or ``None``."""
        try:
            import onnxruntime as ort
        except ImportError as exc:
            return f"onnxruntime is not installed ({exc}); pip install onnxruntime-gpu"
        available = ort.get_available_providers()
        if "CUDAExecutionProvider" not in available:
            return (
                f"onnxruntime {ort.__version__} has no CUDAExecutionProvider here (it has "
                f"{', '.join(available)}); install onnxruntime-gpu on a machine with a CUDA GPU"
            )
        return None

    def compile(self, candidate: Candidate, workdir: Path) -> OrtCompiled:
        """Export, apply int8/fp16, and open a CUDA session (CPU provider as fallback)."""
        if (reason := self.unavailable_reason()) is not None:
            raise RuntimeUnavailableError(f"{self.name}: {reason}")
        compiled = _compile(
            candidate,
            workdir,
            runtime=self.name,
            supported=self.precisions,
            threads=self.threads,
            providers=[
                ("CUDAExecutionProvider", {"device_id": self.device_id}),
                "CPUExecutionProvider",
            ],
        )
        compiled.info["device_id"] = self.device_id
        compiled.info["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
        return compiled
