"""TensorRT: the same ONNX file as ONNX Runtime (Q/DQ int8, fp16 casts), built into an engine.

The network is *strongly typed*: precision comes from the ONNX graph alone (TensorRT 11 has no
FP16/INT8 builder flags), which is exactly what :func:`runners.onnx_export.build_onnx` produces.
The batch axis gets an optimisation profile (min 1, opt 1, max ``max_batch``); a timing cache in
the work directory makes rebuilding similar engines faster. I/O buffers are torch CUDA tensors,
run on a dedicated torch stream. ``tensorrt`` and CUDA are touched only inside methods.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from envs.workloads.inputs import input_names
from runners.base import Candidate, RuntimeUnavailableError
from runners.onnx_export import INPUT_NAME, OUTPUT_NAME, build_onnx, onnx_size_bytes
from runners.quantize import TENSORRT_INT8

MAX_BATCH = 256
"""Largest batch an engine accepts (the optimisation profile's max)."""


@dataclass
class TensorRTCompiled:
    """A deserialized engine and its execution context (implements ``Compiled``)."""

    runtime: str
    size_bytes: int
    """Bytes of the serialized engine (``model.engine``)."""
    info: dict[str, object]
    engine_path: Path
    onnx_path: Path
    trt_runtime: Any = field(repr=False)
    """The ``trt.Runtime`` that deserialized ``engine`` (kept alive as long as the engine)."""
    engine: Any = field(repr=False)
    context: Any = field(repr=False)
    stream: Any = field(repr=False)
    """The ``torch.cuda.Stream`` every copy and launch runs on."""

    def run(self, inputs: np.ndarray | Mapping[str, np.ndarray]) -> np.ndarray:
        """Copy the batch to the GPU, execute, copy the output back as float32 (synchronous)."""
        import tensorrt as trt

        if not isinstance(inputs, np.ndarray):
            (inputs,) = inputs.values()  # compile admits single-tensor models only

        with torch.cuda.stream(self.stream):
            x = torch.from_numpy(np.ascontiguousarray(inputs)).to("cuda")
            x = x.to(_torch_dtype(trt, self.engine.get_tensor_dtype(INPUT_NAME))).contiguous()
            self.context.set_input_shape(INPUT_NAME, tuple(x.shape))
            out = torch.empty(
                tuple(self.context.get_tensor_shape(OUTPUT_NAME)),
                dtype=_torch_dtype(trt, self.engine.get_tensor_dtype(OUTPUT_NAME)),
                device="cuda",
            )
            self.context.set_tensor_address(INPUT_NAME, x.data_ptr())
            self.context.set_tensor_address(OUTPUT_NAME, out.data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log)")
            result = out.float().cpu()  # a blocking copy on this stream
        return result.numpy()


def _torch_dtype(trt: Any, dtype: Any) -> torch.dtype:
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32}
    if dtype not in table:
        raise TypeError(f"engine I/O dtype {dtype} is not supported by this runner")
    return table[dtype]


@dataclass(frozen=True)
class TensorRT:
    """TensorRT 10/11 on one CUDA GPU: fp32, fp16 and int8, as the ONNX graph says."""

    max_batch: int = MAX_BATCH
    """Largest batch the engine's optimisation profile accepts."""
    threads: int | None = None
    """Accepted so every runtime takes the common ``threads`` option; recorded only (the engine
    runs on the GPU)."""
    workspace_bytes: int = 1 << 30
    """Builder workspace memory limit."""
    name: str = field(default="tensorrt", init=False)
    precisions: frozenset[str] = field(default=frozenset({"fp32", "fp16", "int8"}), init=False)

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.workspace_bytes < 1:
            raise ValueError(f"workspace_bytes must be >= 1, got {self.workspace_bytes}")

    def unavailable_reason(self) -> str | None:
        """Why TensorRT cannot run here (library missing, no CUDA GPU), or ``None``."""
        try:
            import tensorrt  # noqa: F401
        except ImportError as exc:
            return (
                f"tensorrt is not installed ({exc}); pip install 'layerpilot[tensorrt]' on a "
                f"machine with an NVIDIA GPU"
            )
        if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
            return (
                f"no CUDA GPU visible to torch {torch.__version__} (CPU-only build or no "
                f"driver); TensorRT builds and runs engines on an NVIDIA GPU"
            )
        return None

    def compile(self, candidate: Candidate, workdir: Path) -> TensorRTCompiled:
        """Build the ONNX (with Q/DQ and fp16 casts), then a strongly typed engine from it."""
        if (reason := self.unavailable_reason()) is not None:
            raise RuntimeUnavailableError(f"{self.name}: {reason}")
        if not isinstance(candidate.example_input, torch.Tensor):
            raise TypeError(
                f"{self.name} runs models with one tensor input; this one takes "
                f"{input_names(candidate.example_input)} (use onnxruntime-cpu/-cuda)"
            )
        import tensorrt as trt

        workdir = Path(workdir)
        artifact = build_onnx(
            candidate, workdir, supported=self.precisions, runtime=self.name, int8=TENSORRT_INT8
        )
        logger = trt.Logger(trt.Logger.WARNING)
        engine_path = workdir / "model.engine"
        engine_path.write_bytes(self._build(trt, logger, artifact.path, workdir / "timing.cache"))

        trt_runtime = trt.Runtime(logger)
        engine = trt_runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if engine is None:
            raise RuntimeError(f"TensorRT could not deserialize {engine_path}")
        context = engine.create_execution_context()
        info: dict[str, object] = {
            "tensorrt": trt.__version__,
            "gpu": torch.cuda.get_device_name(),
            "threads": self.threads,
            "max_batch": self.max_batch,
            "onnx_path": str(artifact.path),
            "onnx_size_bytes": onnx_size_bytes(artifact.path),
            "int8_nodes": len(artifact.int8_nodes),
            "fp16_nodes": len(artifact.fp16_nodes),
        }
        return TensorRTCompiled(
            runtime=self.name,
            size_bytes=engine_path.stat().st_size,
            info=info,
            engine_path=engine_path,
            onnx_path=artifact.path,
            trt_runtime=trt_runtime,
            engine=engine,
            context=context,
            stream=torch.cuda.Stream(),
        )

    def _build(self, trt: Any, logger: Any, onnx_path: Path, cache_path: Path) -> bytes:
        builder = trt.Builder(logger)
        flags = 0
        if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")

        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace_bytes)
        sample = tuple(network.get_input(0).shape)[1:]
        profile = builder.create_optimization_profile()
        profile.set_shape(INPUT_NAME, (1, *sample), (1, *sample), (self.max_batch, *sample))
        config.add_optimization_profile(profile)
        cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.exists() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)

        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path}")
        cache_path.write_bytes(memoryview(config.get_timing_cache().serialize()))
        return bytes(memoryview(serialized))
