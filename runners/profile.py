"""Per-unit share of latency, from ONNX Runtime's own node profiler.

ORT's full optimisation fuses and renames nodes (``Conv``+``Relu`` → an NCHWc node named after
the block), which blurs which layer a time belongs to. This profile therefore runs the same
graph at the *basic* optimisation level (constant folding only), so every node keeps its
module-path name, and attributes each node's kernel time to the units whose path covers it.
Shares are relative (they sum to 1 over all nodes); absolute times come from the latency
protocol, not from here.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
from torch import nn

from envs.workloads.inputs import Inputs, to_feed
from runners.precision_map import module_of_onnx_node

_SUFFIX = "_kernel_time"


def node_times(onnx_path: Path, example_input: Inputs, runs: int = 50) -> Counter[str]:
    """Kernel microseconds per ONNX node over ``runs`` batch-1 runs (median run × runs)."""
    import onnxruntime as ort

    from runners.onnxruntime import session_feed

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.enable_profiling = True
    with tempfile.TemporaryDirectory(prefix="layerpilot-prof-") as tmp:
        options.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        feed = session_feed(session, to_feed(example_input))
        for _ in range(runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    durations: dict[str, list[int]] = {}
    for event in events:
        name = event.get("name", "")
        if event.get("cat") == "Node" and name.endswith(_SUFFIX):
            durations.setdefault(name[: -len(_SUFFIX)], []).append(int(event.get("dur", 0)))
    # the median run of each node, times the runs: one preempted run (a busy machine) must not
    # make a 20 µs node look like the bottleneck
    return Counter({node: int(np.median(d)) * len(d) for node, d in durations.items()})


def latency_shares(
    model: nn.Module, example_input: Inputs, unit_names: list[str], runs: int = 50
) -> dict[str, float]:
    """Share of measured kernel time spent inside each unit (blocks include their layers)."""
    from runners.onnx_export import export_onnx

    with tempfile.TemporaryDirectory(prefix="layerpilot-prof-") as tmp:
        path = export_onnx(model, example_input, Path(tmp) / "model.onnx")
        times = node_times(path, example_input, runs)
    total = sum(times.values()) or 1
    shares = dict.fromkeys(unit_names, 0.0)
    for node, us in times.items():
        module = module_of_onnx_node(node)
        for unit in unit_names:
            if module == unit or module.startswith(unit + "."):
                shares[unit] += us / total
    return shares
