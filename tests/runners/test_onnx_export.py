"""Export of a candidate to the ONNX file the ONNX-based runtimes deploy."""

from __future__ import annotations

import onnx
import pytest
import torch

from runners.onnx_export import export_onnx, onnx_size_bytes
from runners.precision_map import module_of_onnx_node

from models import TEST_MODELS, make_model

_COMPUTE_OPS = {"Conv", "Gemm", "MatMul"}


@pytest.mark.parametrize("name", list(TEST_MODELS))
def test_export_onnx_names_every_node_after_a_real_module(name, tmp_path):
    model, x = make_model(name)

    path = export_onnx(model, x, tmp_path / "model.onnx")

    modules = dict(model.named_modules())
    nodes = [n.name for n in onnx.load(str(path)).graph.node]
    assert [n for n in nodes if module_of_onnx_node(n) not in modules] == []
    compute = [n for n in onnx.load(str(path)).graph.node if n.op_type in _COMPUTE_OPS]
    assert all(module_of_onnx_node(n.name) for n in compute)  # none left at the root


def test_export_onnx_restores_the_attention_fast_path(tmp_path):
    model, x = make_model("transformer")
    assert torch.backends.mha.get_fastpath_enabled()

    export_onnx(model, x, tmp_path / "model.onnx")

    assert torch.backends.mha.get_fastpath_enabled()


def test_onnx_size_bytes_counts_external_data(tmp_path):
    model, x = make_model("resnet")
    path = export_onnx(model, x, tmp_path / "model.onnx")
    proto = onnx.load(str(path))
    onnx.save_model(
        proto,
        str(tmp_path / "ext.onnx"),
        save_as_external_data=True,
        location="ext.bin",
        size_threshold=0,
    )

    size = onnx_size_bytes(tmp_path / "ext.onnx")

    assert size == (tmp_path / "ext.onnx").stat().st_size + (tmp_path / "ext.bin").stat().st_size
    assert size > path.stat().st_size * 0.9
