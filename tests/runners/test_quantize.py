"""QDQ int8 and its calibration, applied to exported ONNX graphs of tiny models."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from runners.base import Candidate
from runners.onnx_export import build_onnx
from runners.quantize import (
    ORT_CPU_INT8,
    TENSORRT_INT8,
    Int8Scheme,
    MissingCalibrationError,
    check_calibration,
    int8_scope,
    ort_cpu_int8,
    quantize_onnx,
)

from models import make_candidate, make_model, random_batch, torch_reference


def test_tensorrt_int8_scheme_gives_signed_zero_point_free_qdq_that_still_runs(tmp_path):
    candidate = make_candidate("resnet", {"layer1": "int8"})
    batch = random_batch(candidate, 4)

    artifact = build_onnx(
        candidate, tmp_path, supported=frozenset({"fp32", "int8"}), int8=TENSORRT_INT8
    )

    model = onnx.load(str(artifact.path))
    zero_points = [
        numpy_helper.to_array(t) for t in model.graph.initializer if t.name.endswith("zero_point")
    ]
    activation_zero_points = [z for z in zero_points if z.dtype != np.int32]  # int32: biases
    assert activation_zero_points
    assert all(z.dtype == np.int8 and not z.any() for z in activation_zero_points)
    assert len(artifact.int8_nodes) >= 4  # the four convs of layer1
    import onnxruntime as ort

    session = ort.InferenceSession(str(artifact.path), providers=["CPUExecutionProvider"])
    out = session.run(None, {"input": batch.numpy()})[0]
    np.testing.assert_allclose(out, torch_reference(candidate, batch), atol=0.05, rtol=0)


def test_int8_scheme_rejects_unknown_activation_type():
    with pytest.raises(ValueError, match="activation_type"):
        Int8Scheme("QInt4")


def test_check_calibration_passes_when_no_module_asks_for_int8():
    model, x = make_model("resnet")

    check_calibration(Candidate(model, x, {"layer1": "fp16"}, calibration=None))


def test_check_calibration_rejects_an_empty_batch():
    model, x = make_model("resnet")
    candidate = Candidate(model, x, {"": "int8"}, calibration=torch.empty(0, *x.shape[1:]))

    with pytest.raises(MissingCalibrationError, match=r"needs calibration inputs.*\(N, "):
        check_calibration(candidate)


def test_quantize_onnx_feeds_calibration_to_the_graphs_own_input_name(tmp_path):
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    source = tmp_path / "m.onnx"
    torch.onnx.export(
        model,
        (torch.randn(1, 8),),
        str(source),
        dynamo=False,
        input_names=["features"],
        dynamic_axes={"features": {0: "batch"}},
    )
    calibration = torch.randn(40, 8, generator=torch.Generator().manual_seed(3))

    target, int8_nodes = quantize_onnx(source, tmp_path / "m.int8.onnx", {"0": "int8"}, calibration)

    graph = onnx.load(str(target)).graph
    assert [i.name for i in graph.input] == ["features"]
    assert int8_nodes == ("/0/Gemm",)


@pytest.mark.parametrize(
    ("flags", "seven_bit"),
    [
        ({"avx2"}, True),  # AVX2 without VNNI: u8 x s8 pair sums saturate in int16
        ({"avx2", "avx512_vnni"}, False),
        ({"avx2", "avx_vnni"}, False),
        (set(), False),  # not x86, or flags unknown: keep ORT's default
    ],
)
def test_ort_cpu_int8_uses_7_bit_weights_only_on_x86_without_vnni(flags, seven_bit):
    scheme = ort_cpu_int8(frozenset(flags))

    assert scheme.reduce_range is seven_bit
    assert scheme.activation_type == ORT_CPU_INT8.activation_type


def test_7_bit_scheme_keeps_every_int8_weight_within_7_bits(tmp_path):
    candidate = make_candidate("resnet", {"layer1": "int8"})

    def weights(scheme: Int8Scheme, where: str) -> np.ndarray:
        artifact = build_onnx(candidate, tmp_path / where, int8=scheme)
        model = onnx.load(str(artifact.path))
        arrays = [numpy_helper.to_array(t) for t in model.graph.initializer]
        return np.concatenate([a.ravel() for a in arrays if a.dtype == np.int8])

    full, reduced = weights(ORT_CPU_INT8, "8"), weights(ort_cpu_int8(frozenset({"avx2"})), "7")

    assert np.abs(full).max() == 127
    assert np.abs(reduced).max() <= 64


def test_int8_scope_names_7_bit_weights_only_when_they_are_used(monkeypatch):
    import runners.latency

    monkeypatch.setattr(runners.latency, "cpu_flags", lambda: frozenset({"avx2"}))
    assert int8_scope("onnxruntime-cpu") == {"int8_weights": "7-bit"}
    assert int8_scope("tensorrt") == {}

    monkeypatch.setattr(runners.latency, "cpu_flags", lambda: frozenset({"avx2", "avx512_vnni"}))
    assert int8_scope("onnxruntime-cpu") == {}
