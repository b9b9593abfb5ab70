"""ONNX Runtime: the CPU and CUDA runtimes, each an ``InferenceSession`` on the candidate's ONNX.

:class:`OnnxRuntimeCPU` (the default runtime) runs fp32 and int8 (QDQ); :class:`OnnxRuntimeCUDA`
adds fp16. Both compile a candidate with :func:`runners.onnx_export.build_onnx` (export, then
the precisions of :mod:`runners.quantize`) and open a session on the file it writes.
``onnxruntime`` itself is imported inside functions only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runners.base import Candidate, RuntimeUnavailableError
from runners.latency import cpu_model
from runners.onnx_export import OUTPUT_NAME, build_onnx, onnx_size_bytes
from runners.quantize import ORT_CPU_INT8, Int8Scheme, ort_cpu_int8


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

    def run(self, inputs: np.ndarray | Mapping[str, np.ndarray]) -> np.ndarray:
        """Run one batch (any batch size) and return the output as float32.

        ``inputs`` is one array (a single-input model) or arrays by input name
        (`envs.workloads.inputs.to_feed`); each is cast to the dtype its graph input declares.
        """
        feed = session_feed(self.session, inputs)
        return np.asarray(self.session.run([OUTPUT_NAME], feed)[0], dtype=np.float32)


_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def session_feed(session: Any, inputs: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The feed of an ORT ``session``: each graph input's array, contiguous, in its dtype.

    Inputs the exporter dropped (unused by the model) are left out.

    Raises:
        ValueError: A graph input has no array (the message names it).
    """
    graph_inputs = session.get_inputs()
    if isinstance(inputs, np.ndarray):
        if len(graph_inputs) != 1:
            raise ValueError(
                f"the model has inputs {[i.name for i in graph_inputs]}; feed arrays by name"
            )
        inputs = {graph_inputs[0].name: inputs}
    feed: dict[str, Any] = {}
    for graph_input in graph_inputs:
        if graph_input.name not in inputs:
            raise ValueError(
                f"input {graph_input.name!r} of the ONNX graph has no array in the feed "
                f"(it has {list(inputs)})"
            )
        dtype = _ORT_TYPES.get(graph_input.type)
        feed[graph_input.name] = np.ascontiguousarray(inputs[graph_input.name], dtype=dtype)
    return feed


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
    int8: Int8Scheme = ORT_CPU_INT8,
) -> OrtCompiled:
    import onnxruntime as ort

    artifact = build_onnx(candidate, workdir, supported=supported, runtime=runtime, int8=int8)
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
            int8=ort_cpu_int8(),
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
