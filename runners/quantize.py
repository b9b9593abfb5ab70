"""Precision applied to an exported ONNX graph: static QDQ int8, fp16, and their calibration.

int8 is ``quant_pre_process`` then ``quantize_static`` in the QDQ format, restricted to the
nodes whose module an ``"int8"`` entry covers (:mod:`runners.precision_map`) and calibrated by
min/max on the candidate's calibration inputs; :class:`Int8Scheme` says which Q/DQ form the
target runtime's int8 kernels accept. fp16 (GPU runtimes only) is ``convert_float_to_float16``
on the covered nodes, with float32 I/O. :func:`runners.onnx_export.build_onnx` runs both on a
fresh export. ``onnx`` and ``onnxruntime.quantization`` are imported inside functions only.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from envs.workloads.inputs import (
    SINGLE_NAME,
    Inputs,
    batch_size,
    check_like,
    named,
    take,
    to_feed,
)
from runners.base import Candidate
from runners.precision_map import PrecisionMappingError, int8_node_names, nodes_covered

if TYPE_CHECKING:
    import onnx

logger = logging.getLogger(__name__)

CALIBRATION_BATCH = 32
"""Samples per calibration batch (the exported batch axis is dynamic)."""
_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


class MissingCalibrationError(ValueError):
    """int8 was asked for, but the candidate carries no (usable) calibration inputs."""


@dataclass(frozen=True)
class Int8Scheme:
    """How int8 Q/DQ nodes are made: what the target runtime's int8 kernels accept."""

    activation_type: str = "QUInt8"
    """``"QUInt8"`` or ``"QInt8"`` (weights are always per-channel, symmetric ``QInt8``)."""
    symmetric_activations: bool = False
    """Activation zero point fixed at 0 (TensorRT accepts only that)."""
    reduce_range: bool = False
    """7-bit weights (``quantize_static(reduce_range=True)``): see `ort_cpu_int8`."""

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
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
"""x86 flags of CPUs whose int8 dot products accumulate in int32 without saturating."""


def ort_cpu_int8(flags: frozenset[str] | None = None) -> Int8Scheme:
    """The int8 scheme for ONNX Runtime on this CPU: `ORT_CPU_INT8`, with 7-bit weights on an
    x86 CPU without VNNI.

    Without VNNI, ORT's U8S8 kernels multiply with AVX2's ``vpmaddubsw``, which adds each pair of
    u8 × s8 products in int16 and saturates; 8-bit weights overflow it. Measured on a 2-core AMD
    EPYC with AVX2 and no VNNI (ORT 1.32, `benchmarks/transforms.py`): int8 everywhere on
    mnist1d-transformer kept 80.40 % of 95.04 % (it kept 94.76 % on a VNNI Xeon). 7-bit weights
    keep every pair sum in range; this is what ORT's docs prescribe for such CPUs. Other CPUs
    (VNNI, ARM, unknown flags) keep 8-bit weights.

    Args:
        flags: CPU flags to decide on (default: this machine's, `runners.latency.cpu_flags`).
    """
    from runners.latency import cpu_flags

    flags = cpu_flags() if flags is None else flags
    if "avx2" in flags and not flags & VNNI_FLAGS:
        return replace(ORT_CPU_INT8, reduce_range=True)
    return ORT_CPU_INT8


def int8_scope(runtime: str) -> dict[str, str]:
    """What of the int8 scheme a cache key must hold: the 7-bit weights `ort_cpu_int8` picks on
    a CPU without VNNI (their graphs measure differently), and nothing otherwise, so keys made
    before the choice existed stay valid."""
    if runtime == "onnxruntime-cpu" and ort_cpu_int8().reduce_range:
        return {"int8_weights": "7-bit"}
    return {}


TENSORRT_INT8 = Int8Scheme("QInt8", symmetric_activations=True)
"""TensorRT: signed int8 with zero point 0 for activations and weights (its only Q/DQ form)."""


def check_calibration(candidate: Candidate) -> None:
    """Raise :class:`MissingCalibrationError` if int8 is asked for without usable calibration."""
    if "int8" not in candidate.precisions.values():
        return
    calibration = candidate.calibration
    int8 = sorted(m for m, p in candidate.precisions.items() if p == "int8")
    shapes = ", ".join(
        f"{'' if name == SINGLE_NAME else name + ' '}(N, {', '.join(map(str, t.shape[1:]))})"
        for name, t in named(candidate.example_input)
    )
    if calibration is None or batch_size(calibration) == 0:
        raise MissingCalibrationError(
            f"int8 for {int8} needs calibration inputs: set Candidate.calibration to a batch of "
            f"representative inputs shaped {shapes}, e.g. a hundred training samples."
        )
    try:
        check_like(calibration, candidate.example_input, "calibration inputs")
    except (TypeError, ValueError) as exc:
        raise MissingCalibrationError(str(exc)) from exc


def quantize_onnx(
    source: Path,
    target: Path,
    precisions: Mapping[str, str],
    calibration: Inputs,
    scheme: Int8Scheme = ORT_CPU_INT8,
) -> tuple[Path, tuple[str, ...]]:
    """Static QDQ int8 quantization of the nodes covered by ``"int8"`` entries of ``precisions``.

    ``quant_pre_process`` (shape inference + ORT's basic graph optimisation) runs first; its
    symbolic shape inference fails on some attention graphs with a dynamic batch, and then the
    step is retried without it (ONNX shape inference still runs). The include list is computed on
    the pre-processed graph, so it holds only names that exist there (the optimisation keeps the
    exporter's names but constant-folds some nodes away). Weights are per-channel symmetric int8,
    activations as ``scheme`` says, calibrated by min/max over ``calibration`` (fed to the
    graph's inputs by name, each in the dtype the graph declares).

    Returns:
        ``target`` and the names of the nodes that now run in int8.

    Raises:
        PrecisionMappingError: No node is left to quantize after pre-processing.
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

    graph = onnx.load(str(pre)).graph
    include = nodes_covered([n.name for n in graph.node], precisions, "int8")
    if not include:
        raise PrecisionMappingError(
            f"no node left to quantize for int8 entries "
            f"{sorted(m for m, p in precisions.items() if p == 'int8')} after pre-processing"
        )
    dtypes = _graph_inputs(graph)
    n = batch_size(calibration)

    def feed(start: int) -> dict[str, np.ndarray]:
        arrays = to_feed(take(calibration, slice(start, start + CALIBRATION_BATCH)))
        if len(dtypes) == 1 and len(arrays) == 1:  # a single input, whatever the graph calls it
            arrays = {next(iter(dtypes)): next(iter(arrays.values()))}
        missing = [name for name in dtypes if name not in arrays]
        if missing:
            raise ValueError(f"input {missing[0]!r} of the graph has no calibration data")
        return {name: np.ascontiguousarray(arrays[name], dtype=dt) for name, dt in dtypes.items()}

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches: Iterator[dict[str, np.ndarray]] = iter(
                feed(i) for i in range(0, n, CALIBRATION_BATCH)
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
            reduce_range=scheme.reduce_range,
            activation_type=getattr(QuantType, scheme.activation_type),
            weight_type=QuantType.QInt8,
            nodes_to_quantize=include,
            extra_options={
                "ActivationSymmetric": scheme.symmetric_activations,
                "WeightSymmetric": True,
            },
        )
    return target, tuple(int8_node_names(onnx.load(str(target)), include))


def _graph_inputs(graph: onnx.GraphProto) -> dict[str, np.dtype[Any]]:
    """The graph's runtime inputs (initializers listed as inputs do not count) and dtypes."""
    from onnx.helper import tensor_dtype_to_np_dtype

    weights = {t.name for t in graph.initializer}
    return {
        i.name: tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)
        for i in graph.input
        if i.name not in weights
    }


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


def convert_fp16(
    source: Path, target: Path, precisions: Mapping[str, str]
) -> tuple[Path, tuple[str, ...]]:
    """Convert the nodes covered by ``"fp16"`` entries of ``precisions`` to fp16 (float32 I/O).

    Q/DQ nodes of int8 modules keep their float32 scales, whatever covers them.

    Returns:
        ``target`` and the names of the nodes now computed in fp16.
    """
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
