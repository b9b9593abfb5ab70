"""How a candidate is built and measured: runtimes behind one Protocol, one latency protocol.

Runtimes are looked up by name and imported only when asked for, so ``import runners`` never
imports ONNX Runtime or TensorRT and never initialises CUDA.

Example:
    >>> runtime = get_runtime("onnxruntime-cpu", threads=1)
    >>> runtime.unavailable_reason() is None
    True
"""

from __future__ import annotations

import importlib
from typing import Any

from runners.base import Candidate, Compiled, Runtime
from runners.latency import LatencyConfig, LatencyStats, measure_latency

__all__ = [
    "GPU_RUNTIMES",
    "Candidate",
    "Compiled",
    "LatencyConfig",
    "LatencyStats",
    "Runtime",
    "UnknownRuntimeError",
    "get_runtime",
    "list_runtimes",
    "measure_latency",
]


class UnknownRuntimeError(ValueError):
    """No runtime is registered under the name asked for."""


#: name -> (module, class, fixed constructor arguments). Every runtime accepts ``threads``.
_RUNTIMES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "onnxruntime-cpu": ("runners.onnxruntime", "OnnxRuntimeCPU", {}),
    "onnxruntime-cuda": ("runners.onnxruntime", "OnnxRuntimeCUDA", {}),
    "torch-cpu": ("runners.torch", "TorchEager", {"device": "cpu"}),
    "torch-cuda": ("runners.torch", "TorchEager", {"device": "cuda"}),
    "tensorrt": ("runners.tensorrt", "TensorRT", {}),
}


#: Runtimes that run on a GPU (an evaluator of one reserves a GPU, e.g. Ray ``num_gpus=1``).
GPU_RUNTIMES = frozenset({"onnxruntime-cuda", "torch-cuda", "tensorrt"})


def list_runtimes() -> list[str]:
    """Names :func:`get_runtime` accepts (whether or not they can run here)."""
    return list(_RUNTIMES)


def get_runtime(name: str, **options: Any) -> Runtime:
    """The runtime registered as ``name``, constructed with ``options`` (e.g. ``threads=1``).

    Constructing a runtime never needs its library or a GPU; ask
    ``runtime.unavailable_reason()`` before compiling.

    Raises:
        UnknownRuntimeError: ``name`` is not registered.
        TypeError: An option the runtime does not take.
    """
    if name not in _RUNTIMES:
        raise UnknownRuntimeError(
            f"no runtime named {name!r}; known runtimes: {', '.join(_RUNTIMES)}"
        )
    module, cls, fixed = _RUNTIMES[name]
    runtime_cls = getattr(importlib.import_module(module), cls)
    try:
        return runtime_cls(**fixed, **options)  # type: ignore[no-any-return]
    except TypeError as exc:
        raise TypeError(f"runtime {name!r}: {exc}") from exc
