"""Which ONNX nodes a per-unit precision covers: the map from exported node names to modules.

A strategy names modules (``layer1.0.conv1``); the deployed graph has nodes
(``/layer1/layer1.0/conv1/Conv``). :func:`module_of_onnx_node` turns a node name written by the
TorchScript exporter back into the module path it ran in, :func:`nodes_covered` picks the nodes
whose module a precision entry covers (longest prefix, as everywhere else), and
:func:`check_entries_match` refuses an entry that covers no node at all. ``onnx`` is imported
for type checking only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from runners.base import covered_by

if TYPE_CHECKING:
    import onnx


class PrecisionMappingError(ValueError):
    """A precision entry names a module that no node of the exported graph belongs to."""


def module_of_onnx_node(node_name: str) -> str:
    """Module path of a node named by the TorchScript ONNX exporter.

    The exporter scopes names by the modules that were called, each scope holding the module's
    *unqualified* name — its path from the last non-numeric atom on (``layer1.0.conv1`` ->
    ``conv1``, ``layer1.0`` -> ``layer1.0``). The full path is rebuilt by appending each scope to
    the path so far, overlapping where a scope repeats the end of it:
    ``/layer1/layer1.0/conv1/Conv`` -> ``layer1.0.conv1``; ``/encoder/layers.0/linear1/MatMul``
    -> ``encoder.layers.0.linear1`` (the ``layers`` ModuleList is never called, so it has no
    scope); top-level ops (``/Relu``) and unscoped nodes -> ``""``.
    """
    if not node_name.startswith("/"):
        return ""
    atoms: list[str] = []
    for scope in node_name.strip("/").split("/")[:-1]:
        parts = scope.split(".")
        overlap = next((k for k in range(len(parts) - 1, 0, -1) if atoms[-k:] == parts[:k]), 0)
        atoms.extend(parts[overlap:])
    return ".".join(atoms)


def nodes_covered(
    graph_nodes: list[str], precisions: Mapping[str, str], precision: str
) -> list[str]:
    """Names of the nodes whose module is covered (longest prefix) by a ``precision`` entry."""
    chosen = []
    for name in graph_nodes:
        entry = covered_by(module_of_onnx_node(name), dict(precisions))
        if entry is not None and precisions[entry] == precision:
            chosen.append(name)
    return chosen


def check_entries_match(graph_nodes: list[str], precisions: Mapping[str, str]) -> None:
    """Raise :class:`PrecisionMappingError` for an entry that covers no node of the graph."""
    modules = {module_of_onnx_node(n) for n in graph_nodes}
    for entry in sorted(precisions):
        if entry and not any(m == entry or m.startswith(entry + ".") for m in modules):
            known = sorted(m for m in modules if m)
            raise PrecisionMappingError(
                f"precision entry {entry!r} ({precisions[entry]}) matches no node of the exported "
                f"ONNX graph; name a module that computes something in the graph (BatchNorm is "
                f"folded into its conv, so name the conv or the block). Modules in the graph: "
                f"{', '.join(known[:20])}{' …' if len(known) > 20 else ''}"
            )


def int8_node_names(model: onnx.ModelProto, include: list[str]) -> list[str]:
    """Nodes of ``include`` that the quantizer wrapped: an input comes from a DequantizeLinear.

    Only ``include`` counts, because a quantized node's output Q/DQ pair also feeds its fp32
    consumers.
    """
    dequantized = {
        out for n in model.graph.node if n.op_type == "DequantizeLinear" for out in n.output
    }
    wanted = set(include)
    return [
        n.name
        for n in model.graph.node
        if n.name in wanted and any(i in dequantized for i in n.input)
    ]
