"""PyTorch eager: the candidate's own ``nn.Module``, run as it is (a reference runtime).

No export and no graph compiler, so it measures what a plain PyTorch deployment gets. fp16 (CUDA
only) is applied per module: each module whose precision differs from its parent's is cast, and
hooks cast its floating inputs in and its outputs back, so mixed plans run. int8 needs a graph
quantizer and is refused. CUDA is touched only inside methods.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from envs.workloads.inputs import Inputs, call, from_feed, to
from runners.base import Candidate, RuntimeUnavailableError, check_precisions, covered_by
from runners.latency import cpu_model

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def apply_precisions(model: nn.Module, precisions: dict[str, str]) -> nn.Module:
    """Cast ``model``'s modules in place to their precision (``"fp32"``/``"fp16"``).

    A module whose precision differs from its parent's (the root's parent being fp32, the dtype
    of the inputs) gets its parameters cast and two hooks: floating-point inputs are cast to its
    dtype on the way in, and floating-point outputs back to the parent's dtype on the way out.

    Returns:
        ``model``.
    """

    def precision_of(path: str) -> str:
        entry = covered_by(path, precisions)
        return precisions[entry] if entry is not None else "fp32"

    for path, module in model.named_modules():  # parents before children
        parent = path.rpartition(".")[0] if path else None
        inner = precision_of(path)
        outer = precision_of(parent) if parent is not None else "fp32"
        if inner != outer:
            module.to(_DTYPES[inner])
            module.register_forward_pre_hook(_cast_hook(_DTYPES[inner]))
            module.register_forward_hook(_cast_hook(_DTYPES[outer], output=True))
    return model


def _cast_hook(dtype: torch.dtype, *, output: bool = False) -> Any:
    def cast(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value.to(dtype)
        if isinstance(value, tuple | list):
            return type(value)(cast(v) for v in value)
        return value

    if output:
        return lambda _module, _args, out: cast(out)
    return lambda _module, args: cast(args)


@dataclass
class TorchCompiled:
    """A candidate ready to run in eager PyTorch (implements ``Compiled``)."""

    runtime: str
    size_bytes: int
    """Bytes of the serialized ``state_dict``."""
    info: dict[str, object]
    model: nn.Module = field(repr=False)
    """The module that runs (a cast/moved copy when precisions or device required it)."""
    device: str = "cpu"
    threads: int | None = None
    """Intra-op threads while running (set and restored around each run), or torch's default."""
    example_input: Inputs | None = field(default=None, repr=False)
    """The candidate's example input: the structure arrays fed by name are put back into."""

    def run(self, inputs: np.ndarray | Mapping[str, np.ndarray]) -> np.ndarray:
        """Run one batch and return the first output as float32 (synchronises the device).

        One array (a single-tensor model) is run as float32; arrays by input name are called
        in the example input's structure (``model(*x)``, ``model(**x)``), dtypes kept."""
        x: Inputs
        if isinstance(inputs, np.ndarray):
            x = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32))
        elif self.example_input is None:
            raise ValueError("TorchCompiled fed by name needs its candidate's example_input")
        else:
            x = from_feed(self.example_input, inputs)
        x = to(x, self.device)
        previous = torch.get_num_threads()
        if self.threads is not None and self.threads != previous:
            torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                out = call(self.model, x)
        finally:
            if torch.get_num_threads() != previous:
                torch.set_num_threads(previous)
        if isinstance(out, tuple | list):
            out = out[0]
        return out.float().cpu().numpy()


@dataclass(frozen=True)
class TorchEager:
    """Eager PyTorch on CPU (fp32) or CUDA (fp32, fp16).

    Example:
        >>> compiled = TorchEager().compile(candidate, tmp)  # doctest: +SKIP
    """

    device: str = "cpu"
    """``"cpu"`` or ``"cuda"`` (``"cuda:N"`` for a given GPU)."""
    threads: int | None = None
    """Intra-op threads while a compiled model runs; ``None`` keeps torch's setting."""
    name: str = field(default="", init=False)
    precisions: frozenset[str] = field(default=frozenset(), init=False)

    def __post_init__(self) -> None:
        kind = self.device.split(":")[0]
        if kind not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {self.device!r}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 or None, got {self.threads}")
        object.__setattr__(self, "name", f"torch-{kind}")
        supported = {"fp32", "fp16"} if kind == "cuda" else {"fp32"}
        object.__setattr__(self, "precisions", frozenset(supported))

    def unavailable_reason(self) -> str | None:
        """Why this device cannot run here (no CUDA GPU), or ``None``."""
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            return (
                f"torch {torch.__version__} sees no CUDA GPU (a CPU-only build, or no driver); "
                f"use torch-cpu, or run on a machine with an NVIDIA GPU and a CUDA build of torch"
            )
        return None

    def compile(self, candidate: Candidate, workdir: Path) -> TorchCompiled:
        """Move/cast a copy of the model as needed; nothing is written to ``workdir``."""
        if (reason := self.unavailable_reason()) is not None:
            raise RuntimeUnavailableError(f"{self.name}: {reason}")
        check_precisions(candidate.precisions, self.precisions, self.name)
        model = candidate.model
        if self.device != "cpu" or any(p != "fp32" for p in candidate.precisions.values()):
            model = apply_precisions(
                copy.deepcopy(model).to(self.device), dict(candidate.precisions)
            )
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        info: dict[str, object] = {
            "device": self.device,
            "threads": self.threads or torch.get_num_threads(),
            "torch": torch.__version__,
        }
        if (cpu := cpu_model()) is not None:
            info["cpu"] = cpu
        if self.device.startswith("cuda"):
            info["gpu"] = torch.cuda.get_device_name(torch.device(self.device))
        return TorchCompiled(
            runtime=self.name,
            size_bytes=buffer.getbuffer().nbytes,
            info=info,
            model=model,
            device=self.device,
            threads=self.threads,
            example_input=candidate.example_input,
        )
