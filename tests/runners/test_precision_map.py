"""The map from exported ONNX node names to modules, and which nodes a precision covers."""

from __future__ import annotations

import onnx
import pytest
from onnx import helper

from runners.precision_map import (
    PrecisionMappingError,
    check_entries_match,
    int8_node_names,
    module_of_onnx_node,
    nodes_covered,
)

_NODES = [
    "/conv1/Conv",
    "/layer1/layer1.0/conv1/Conv",
    "/layer1/layer1.0/conv2/Conv",
    "/layer1/layer1.1/conv1/Conv",
    "/fc/Gemm",
    "/Relu",
]


@pytest.mark.parametrize(
    ("node", "module"),
    [
        ("/layer1/layer1.0/conv1/Conv", "layer1.0.conv1"),
        ("/layer2/layer2.0/downsample/downsample.0/Conv", "layer2.0.downsample.0"),
        ("/encoder/layers.0/self_attn/MatMul", "encoder.layers.0.self_attn"),
        ("/layers.1/attention/query/MatMul", "layers.1.attention.query"),
        ("/0/0.1/Conv", "0.1"),
        ("/Relu", ""),
        ("Identity_105", ""),
    ],
)
def test_module_of_onnx_node_rebuilds_the_full_module_path(node, module):
    assert module_of_onnx_node(node) == module


def test_nodes_covered_takes_the_longest_entry_that_covers_a_node():
    precisions = {"": "int8", "layer1.0": "fp32", "layer1.0.conv2": "int8"}

    covered = nodes_covered(_NODES, precisions, "int8")

    assert covered == [
        "/conv1/Conv",
        "/layer1/layer1.0/conv2/Conv",
        "/layer1/layer1.1/conv1/Conv",
        "/fc/Gemm",
        "/Relu",
    ]
    assert nodes_covered(_NODES, precisions, "fp32") == ["/layer1/layer1.0/conv1/Conv"]


def test_check_entries_match_accepts_modules_and_their_ancestors():
    check_entries_match(_NODES, {"": "int8", "layer1": "int8", "layer1.0.conv2": "fp16"})


def test_check_entries_match_names_the_entry_and_the_graph_modules():
    with pytest.raises(PrecisionMappingError, match=r"'layer9' \(int8\).*layer1\.0\.conv1"):
        check_entries_match(_NODES, {"layer9": "int8"})


def test_int8_node_names_counts_only_included_nodes_fed_by_a_dequantize():
    nodes = [
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["x_dq"], name="dq"),
        helper.make_node("Conv", ["x_dq", "w"], ["y"], name="/a/Conv"),
        helper.make_node("Relu", ["x_dq"], ["r"], name="/b/Relu"),  # an fp32 consumer
        helper.make_node("Conv", ["y", "w"], ["z2"], name="/c/Conv"),
    ]
    model = helper.make_model(helper.make_graph(nodes, "g", [], []))

    names = int8_node_names(model, ["/a/Conv", "/c/Conv"])

    assert isinstance(model, onnx.ModelProto)
    assert names == ["/a/Conv"]
