"""The ONNX Runtime runtimes end to end (export, per-module int8 QDQ, session), on tiny models."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
import torch

from runners.base import Candidate, UnsupportedPrecisionError
from runners.onnxruntime import OnnxRuntimeCPU, OnnxRuntimeCUDA
from runners.precision_map import PrecisionMappingError
from runners.quantize import MissingCalibrationError

from models import make_candidate, make_model, random_batch, torch_reference

_COMPUTE_OPS = {"Conv", "Gemm", "MatMul"}


@pytest.mark.parametrize("name", ["resnet", "transformer"])
@pytest.mark.parametrize("batch_size", [1, 5])
def test_ort_fp32_outputs_equal_torch_at_any_batch_size(name, batch_size, tmp_path):
    candidate = make_candidate(name)
    batch = random_batch(candidate, batch_size)

    compiled = OnnxRuntimeCPU().compile(candidate, tmp_path)
    out = compiled.run(batch.numpy())

    assert out.dtype == np.float32
    np.testing.assert_allclose(out, torch_reference(candidate, batch), atol=1e-4, rtol=1e-3)


def test_ort_compiled_reports_file_size_and_measurement_facts(tmp_path):
    compiled = OnnxRuntimeCPU(threads=1).compile(make_candidate("resnet"), tmp_path)

    assert compiled.size_bytes == compiled.onnx_path.stat().st_size
    assert compiled.info["threads"] == 1
    assert compiled.info["provider"] == "CPUExecutionProvider"
    assert compiled.info["onnx_path"] == str(compiled.onnx_path)
    assert compiled.info["int8_nodes"] == 0
    assert isinstance(compiled.info["onnxruntime"], str)


def test_ort_int8_on_one_conv_quantizes_only_that_conv(tmp_path):
    candidate = make_candidate("resnet", {"layer1.0.conv1": "int8"})
    batch = random_batch(candidate, 4)

    compiled = OnnxRuntimeCPU().compile(candidate, tmp_path)

    graph = onnx.load(str(compiled.onnx_path)).graph
    producer = {out: n for n in graph.node for out in n.output}
    counts = Counter(n.op_type for n in graph.node)
    assert counts["QuantizeLinear"] >= 2  # the conv's input and output activations
    assert counts["DequantizeLinear"] >= 3  # ... and its weight
    dequantized_compute = [
        n.name
        for n in graph.node
        if n.op_type in _COMPUTE_OPS
        and any(i in producer and producer[i].op_type == "DequantizeLinear" for i in n.input)
    ]
    assert dequantized_compute == ["/layer1/layer1.0/conv1/Conv"]
    conv = next(n for n in graph.node if n.name == "/layer1/layer1.0/conv1/Conv")
    conv_input = producer[producer[conv.input[0]].input[0]].input[0]  # tensor -> Q -> DQ -> conv
    quantized = {n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    assert quantized == {conv_input, conv.output[0]}
    assert compiled.info["int8_nodes"] == 1
    np.testing.assert_allclose(
        compiled.run(batch.numpy()), torch_reference(candidate, batch), atol=0.02, rtol=0
    )


def test_ort_int8_node_names_survive_pre_processing(tmp_path):
    candidate = make_candidate("transformer", {"": "int8"})

    OnnxRuntimeCPU().compile(candidate, tmp_path)

    exported = onnx.load(str(tmp_path / "model.onnx")).graph.node
    pre = {n.name for n in onnx.load(str(tmp_path / "model.pre.onnx")).graph.node}
    compute = {n.name for n in exported if n.op_type in _COMPUTE_OPS}
    assert compute and compute <= pre


def test_ort_int8_everywhere_but_fc_keeps_fc_in_fp32_and_shrinks_the_file(tmp_path):
    fp32 = OnnxRuntimeCPU().compile(make_candidate("resnet"), tmp_path / "fp32")
    candidate = make_candidate("resnet", {"": "int8", "fc": "fp32"})
    batch = random_batch(candidate, 8)

    int8 = OnnxRuntimeCPU().compile(candidate, tmp_path / "int8")

    graph = onnx.load(str(int8.onnx_path)).graph
    producer = {out: n.op_type for n in graph.node for out in n.output}
    fc = next(n for n in graph.node if n.name == "/fc/Gemm")
    assert all(producer.get(i) != "DequantizeLinear" for i in fc.input)
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert all(any(producer.get(i) == "DequantizeLinear" for i in n.input) for n in convs)
    assert int8.size_bytes < fp32.size_bytes / 2
    out, ref = int8.run(batch.numpy()), torch_reference(candidate, batch)
    assert np.corrcoef(out.ravel(), ref.ravel())[0, 1] > 0.99


def test_ort_int8_on_a_transformer_linear_runs_close_to_fp32(tmp_path):
    candidate = make_candidate("transformer", {"encoder.layers.0.linear1": "int8"})
    batch = random_batch(candidate, 4)

    compiled = OnnxRuntimeCPU().compile(candidate, tmp_path)

    graph = onnx.load(str(compiled.onnx_path)).graph
    producer = {out: n.op_type for n in graph.node for out in n.output}
    int8_matmuls = {
        n.name
        for n in graph.node
        if n.op_type in _COMPUTE_OPS and any(producer.get(i) == "DequantizeLinear" for i in n.input)
    }
    assert "/encoder/layers.0/linear1/MatMul" in int8_matmuls
    assert not any("self_attn" in n or "linear2" in n for n in int8_matmuls)
    np.testing.assert_allclose(
        compiled.run(batch.numpy()), torch_reference(candidate, batch), atol=0.05, rtol=0
    )


def test_ort_cpu_rejects_fp16_naming_module_and_supported_precisions(tmp_path):
    candidate = make_candidate("resnet", {"layer1.0": "fp16"})

    with pytest.raises(UnsupportedPrecisionError, match=r"'layer1\.0'.*'fp16'.*fp32, int8"):
        OnnxRuntimeCPU().compile(candidate, tmp_path)

    assert not (tmp_path / "model.onnx").exists()  # refused before exporting


def test_ort_int8_without_calibration_raises_missing_calibration(tmp_path):
    model, x = make_model("resnet")
    candidate = Candidate(model, x, {"layer1.0": "int8"}, calibration=None)

    with pytest.raises(MissingCalibrationError, match="calibration"):
        OnnxRuntimeCPU().compile(candidate, tmp_path)


def test_ort_int8_with_misshaped_calibration_raises_missing_calibration(tmp_path):
    model, x = make_model("resnet")
    candidate = Candidate(model, x, {"layer1.0": "int8"}, calibration=torch.randn(4, 3, 8, 8))

    with pytest.raises(MissingCalibrationError, match="shape"):
        OnnxRuntimeCPU().compile(candidate, tmp_path)


def test_ort_precision_on_unknown_module_raises_precision_mapping_error(tmp_path):
    candidate = make_candidate("resnet", {"layer9.conv1": "int8"})

    with pytest.raises(PrecisionMappingError, match=r"'layer9\.conv1'.*layer1\.0\.conv1"):
        OnnxRuntimeCPU().compile(candidate, tmp_path)


def test_ort_runtime_rejects_zero_threads():
    with pytest.raises(ValueError, match="threads"):
        OnnxRuntimeCPU(threads=0)


def test_ort_cuda_explains_why_it_is_unavailable_without_cuda_provider(tmp_path):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("the CUDA provider is available here")
    runtime = OnnxRuntimeCUDA()

    reason = runtime.unavailable_reason()

    assert reason is not None and "CUDAExecutionProvider" in reason
    from runners.base import RuntimeUnavailableError

    with pytest.raises(RuntimeUnavailableError, match="CUDAExecutionProvider"):
        runtime.compile(make_candidate("resnet"), tmp_path)
