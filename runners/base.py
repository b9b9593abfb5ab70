"""What every runtime implements, and the live candidate it is handed.

One module per runtime (``onnxruntime.py``, ``torch.py``, ``tensorrt.py``) implements
:class:`Runtime` (the ONNX-based ones share ``onnx_export.py``, ``precision_map.py`` and
``quantize.py``); each imports its heavy library inside functions so that ``import runners``
never imports TensorRT or initialises CUDA.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from envs.workloads.inputs import Inputs, to_feed


class RuntimeUnavailableError(RuntimeError):
    """The runtime cannot run here (no GPU, library missing); the message says why."""


class UnsupportedPrecisionError(ValueError):
    """A strategy asks a runtime for a precision it does not run."""


@dataclass
class Candidate:
    """A built model about to be compiled and measured (a live object, not a record).

    ``model`` already carries every structural transform (prune, skip, low-rank); precision is
    applied by the runtime when it compiles, because quantization is a property of the deployed
    graph, not of the PyTorch module.
    """

    model: nn.Module
    """The transformed model, eval mode, on CPU."""
    example_input: Inputs
    """One input with batch size 1 (export shapes, dtypes and names; the batch axis is exported
    dynamic): a tensor, tuple or dict of tensors (`envs.workloads.inputs`)."""
    precisions: dict[str, str] = field(default_factory=dict)
    """Module path -> precision (``"int8"``, ``"fp16"``) for every module not run in fp32.
    A path covers its submodules (``"layer1.0"`` covers ``"layer1.0.conv1"``)."""
    calibration: Inputs | None = None
    """Inputs for static-quantization calibration (required when any precision is int8)."""
    notes: dict[str, object] = field(default_factory=dict)
    """Facts of the build recorded with the measurement (e.g. controller training)."""

    @property
    def input_dependent(self) -> bool:
        """Whether the model's cost depends on the input (an action says so: dynamic skip):
        latency is then measured over real inputs, not one repeated example."""
        from search_spaces.actions import input_dependent

        return input_dependent(self.model)


@runtime_checkable
class Compiled(Protocol):
    """A candidate compiled for one runtime, ready to run."""

    runtime: str
    size_bytes: int
    """Serialized size of what would be deployed (ONNX file, engine, state dict)."""
    info: dict[str, object]
    """Facts a reader needs to trust a measurement: threads, provider, library versions."""

    def run(self, inputs: np.ndarray | Mapping[str, np.ndarray]) -> np.ndarray:
        """Run a batch (any batch size) and return the first output as float32.

        ``inputs``: one array for a single-tensor model, else arrays by input name
        (`envs.workloads.inputs.to_feed`)."""
        ...


@runtime_checkable
class Runtime(Protocol):
    """A deployment runtime that compiles candidates and runs them."""

    name: str
    precisions: frozenset[str]
    """Precisions this runtime executes (always includes ``"fp32"``)."""

    def unavailable_reason(self) -> str | None:
        """``None`` when this runtime can run here, else a one-line reason."""
        ...

    def compile(self, candidate: Candidate, workdir: Path) -> Compiled:
        """Export/quantize/build ``candidate`` (files under ``workdir``) and return it ready."""
        ...


def runtime_inputs(x: Inputs) -> np.ndarray | dict[str, np.ndarray]:
    """What ``Compiled.run`` takes for ``x``: one float32 array for a floating single tensor (as
    runtimes have always been fed), else arrays by input name in their own dtypes."""
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        return np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
    return to_feed(x)


def covered_by(module_path: str, prefixes: dict[str, str] | set[str] | list[str]) -> str | None:
    """The longest entry of ``prefixes`` that is ``module_path`` or one of its ancestors."""
    best: str | None = None
    for prefix in prefixes:
        if (module_path == prefix or module_path.startswith(prefix + ".") or prefix == "") and (
            best is None or len(prefix) > len(best)
        ):
            best = prefix
    return best


def check_precisions(precisions: dict[str, str], supported: frozenset[str], runtime: str) -> None:
    """Raise :class:`UnsupportedPrecisionError` if a module asks ``runtime`` for a precision
    outside ``supported`` (called by every runtime's ``compile`` before any work)."""
    for module, precision in sorted(precisions.items()):
        if precision not in supported:
            where = f"module {module!r}" if module else "the whole model ('')"
            raise UnsupportedPrecisionError(
                f"{runtime} cannot run {where} in {precision!r}; it runs "
                f"{', '.join(sorted(supported))}. Choose one of those for this module, or a "
                f"runtime that runs {precision!r} (`layerpilot runtimes` lists them)."
            )
