"""The dynamic-skip controller and gated model: shapes, determinism, forced gates, ONNX If."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from runners.base import Candidate
from search_spaces import Strategy, apply_plan, canonicalize, discover_units, resolve
from search_spaces.actions.dynamic_skip.model import DynamicSkipModel, SkipController
from search_spaces.space import DecisionSpace

from models import make_model


def _gated(name: str, alpha: float = 1.0, skip: tuple[str, ...] = (), gelu: bool = False):
    model, x = make_model(name)
    if gelu:  # the transformer's feed-forward activation, as in mnist1d-transformer
        for layer in model.encoder.layers:
            layer.activation = torch.nn.functional.gelu
    canonical = canonicalize(copy.deepcopy(model))
    units = discover_units(canonical, x)
    spec = {u.name: {"dynamic_skip": alpha} for u in units if u.skippable and u.name not in skip}
    spec.update({b: {"skip": True} for b in skip})
    built, _ = apply_plan(canonical, units, resolve(Strategy(spec), units), x)
    return model, x, canonical, units, built


def _mix_gates(built: DynamicSkipModel, batch: torch.Tensor) -> None:
    """Set each gate's bias so that about half of ``batch`` runs each block (in order: a gate's
    logits depend only on the gates before it)."""
    controller = built.controller
    with torch.no_grad():
        controller.head.weight.normal_(generator=torch.Generator().manual_seed(0))
        for k in range(controller.num_gates):
            built(batch)
            logits = torch.logit(built.state.probs[k].clamp(1e-6, 1 - 1e-6))
            controller.bias[k] -= logits.median() + 1e-4


def test_controller_gives_one_probability_per_input_and_is_deterministic():
    controller = SkipController([8, 16], hidden=4)
    pooled, previous = torch.randn(5, 2 * 8), torch.ones(5, 1)  # mean and std of 8 channels

    logits, (h, c) = controller.step(0, pooled, controller.initial_state(5, pooled), previous)
    again, _ = controller.step(0, pooled, controller.initial_state(5, pooled), previous)

    assert logits.shape == (5, 1) and h.shape == c.shape == (5, 4)
    torch.testing.assert_close(logits, again, atol=0, rtol=0)
    # untrained: every gate open (p ≈ 0.73 > 0.5)
    assert torch.all(torch.sigmoid(logits) > 0.5)


@pytest.mark.parametrize("name", ["resnet", "transformer", "resnet1d"])
def test_gates_forced_open_equal_the_original_model(name):
    model, x, _, _, built = _gated(name)
    batch = torch.randn(6, *x.shape[1:], generator=torch.Generator().manual_seed(0))

    assert isinstance(built, DynamicSkipModel) and len(built.gated) >= 2
    with torch.no_grad(), built.forced(True):
        torch.testing.assert_close(built(batch), model(batch), atol=1e-5, rtol=1e-5)
    assert bool(built.last_gates().all())


@pytest.mark.parametrize("name", ["resnet", "transformer"])
def test_gates_forced_closed_equal_static_skip_of_the_same_blocks(name):
    _, x, canonical, units, built = _gated(name)
    batch = torch.randn(6, *x.shape[1:], generator=torch.Generator().manual_seed(1))
    static, _ = apply_plan(
        canonical, units, resolve(Strategy({b: {"skip": True} for b in built.gated}), units), x
    )

    with torch.no_grad(), built.forced(False):
        torch.testing.assert_close(built(batch), static(batch), atol=1e-6, rtol=1e-6)
    assert not bool(built.last_gates().any())


def test_mixed_gates_run_each_input_as_if_alone():
    """Per-input decisions in a batch equal batch-1 execution (sub-batch gather/scatter)."""
    _, x, _, _, built = _gated("resnet")
    batch = torch.randn(16, *x.shape[1:], generator=torch.Generator().manual_seed(2))
    _mix_gates(built, batch)

    with torch.no_grad():
        together = built(batch)
        gates = built.last_gates()
        alone = torch.cat([built(batch[i : i + 1]) for i in range(len(batch))])

    assert 0 < float(gates.mean()) < 1, "the test needs a mix of open and closed gates"
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_skipped_blocks_are_not_gated_and_the_rest_are():
    _, _, _, units, built = _gated("resnet", skip=("layer1.1",))

    assert "layer1.1" not in built.gated
    assert set(built.gated) == {u.name for u in units if u.skippable} - {"layer1.1"}


def test_onnx_export_has_if_nodes_and_matches_torch_decisions_and_outputs(tmp_path):
    import onnx

    from runners.onnxruntime import OnnxRuntimeCPU

    _, x, _, _, built = _gated("resnet")
    batch = torch.randn(12, *x.shape[1:], generator=torch.Generator().manual_seed(2))
    _mix_gates(built, batch)

    compiled = OnnxRuntimeCPU().compile(Candidate(built, x), tmp_path)
    graph = onnx.load(str(compiled.onnx_path)).graph
    session = compiled.session

    assert sum(n.op_type == "If" for n in graph.node) == len(built.gated)
    decisions = []
    for i in range(len(batch)):  # batch 1: the deployment case, exact compute saving
        out, gates = session.run(None, {"input": batch[i : i + 1].numpy()})
        with torch.no_grad():
            ref = built(batch[i : i + 1]).numpy()
        np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-3)
        np.testing.assert_array_equal(gates, built.last_gates().numpy())
        decisions.append(gates)
    assert 0 < np.mean(decisions) < 1, "the test needs a mix of open and closed gates"
    # a whole batch through the If nodes gives the same per-input results
    out, gates = session.run(None, {"input": batch.numpy()})
    np.testing.assert_array_equal(gates, np.concatenate(decisions))
    with torch.no_grad():
        np.testing.assert_allclose(out, built(batch).numpy(), atol=1e-4, rtol=1e-3)


def test_dynamic_skip_is_opt_in_and_drops_precision_from_a_strategy():
    units = _gated("resnet")[3]
    default = DecisionSpace(units)
    space = DecisionSpace(units, actions=["dynamic_skip", "precision", "skip"])
    choices = space.identity()
    blocks = [i for i, s in enumerate(space.steps) if "dynamic_skip" in s.options]
    convs = [i for i, s in enumerate(space.steps) if "precision" in s.options]
    choices[blocks[0]][space.action_names.index("dynamic_skip")] = 1
    choices[convs[0]][space.action_names.index("precision")] = 1

    strategy = space.to_strategy(choices)

    assert "dynamic_skip" not in default.action_names
    assert strategy.units == {space.steps[blocks[0]].unit.name: {"dynamic_skip": 2.0}}


def test_dynamic_skip_with_int8_fails_with_a_clear_error(tmp_path):
    from runners.base import UnsupportedPrecisionError
    from runners.onnxruntime import OnnxRuntimeCPU

    _, x, _, _, built = _gated("resnet")
    candidate = Candidate(built, x, {"layer1.0.conv1": "int8"}, torch.randn(8, *x.shape[1:]))

    with pytest.raises(UnsupportedPrecisionError, match="dynamic-skip model runs fp32 only"):
        OnnxRuntimeCPU().compile(candidate, tmp_path)


def test_onnx_branches_own_their_weights_so_ort_fuses_inside_them(tmp_path):
    """A branch reading weights or constants from the outer scope runs unfused kernels (GELU as
    five ops); the exporter gives every branch its own copies."""
    import onnx
    import onnxruntime as ort

    from runners.onnxruntime import OnnxRuntimeCPU

    _, x, _, _, built = _gated("transformer", gelu=True)
    compiled = OnnxRuntimeCPU().compile(Candidate(built, x), tmp_path)
    model = onnx.load(str(compiled.onnx_path))
    outer = {t.name for t in model.graph.initializer}
    branches = [
        attr.g for node in model.graph.node if node.op_type == "If" for attr in node.attribute
    ]
    assert len(branches) == 2 * len(built.gated)
    read = {name for node in model.graph.node for name in node.input}
    for branch in branches:
        reads = {name for node in branch.node for name in node.input}
        assert not reads & outer, f"{branch.name} reads outer initializers {reads & outer}"
        read |= reads
    assert outer <= read, f"initializers nothing reads: {outer - read}"

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(compiled.onnx_path), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(str(tmp_path / "optimized.onnx"))
    ops = [
        n.op_type
        for node in optimized.graph.node
        if node.op_type == "If"
        for attr in node.attribute
        for n in attr.g.node
    ]
    assert "Erf" not in ops and {"Gelu", "BiasGelu"} & set(ops), ops


@pytest.mark.parametrize("name", ["resnet", "transformer"])
def test_gates_add_few_nodes_to_the_onnx_main_graph(tmp_path, name):
    """ONNX Runtime pays a fixed cost per node, and every gate's controller step runs on every
    input: the optimised main graph (everything but the gated blocks) stays within 36 nodes per
    gate. The LSTMCell as exported (two Gemms and an Add) with [B] decisions (Squeeze,
    Unsqueeze, Cast) took 41 on the resnet and 42 on the transformer."""
    import onnx
    import onnxruntime as ort

    from runners.onnxruntime import OnnxRuntimeCPU

    _, x, _, _, built = _gated(name)
    compiled = OnnxRuntimeCPU().compile(Candidate(built, x), tmp_path)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(compiled.onnx_path), options, providers=["CPUExecutionProvider"])
    nodes = onnx.load(str(tmp_path / "optimized.onnx")).graph.node

    assert sum(n.op_type == "If" for n in nodes) == len(built.gated)
    assert not {"Pow", "Squeeze", "Unsqueeze"} & {n.op_type for n in nodes}
    assert len(nodes) <= 36 * len(built.gated), len(nodes)


def test_controller_step_is_its_lstm_cell_and_head():
    """The step writes nn.LSTMCell out (one matrix product) for a smaller ONNX graph; it must
    compute what the cell and the head it holds compute."""
    controller = SkipController([8, 16], hidden=4)
    with torch.no_grad():
        for p in controller.parameters():
            p.normal_(generator=torch.Generator().manual_seed(p.numel()))
    pooled, previous = torch.randn(5, 2 * 16), torch.randint(0, 2, (5, 1)).float()
    state = (torch.randn(5, 4), torch.randn(5, 4))

    logits, (h, c) = controller.step(1, pooled, state, previous)

    features = torch.cat([torch.relu(controller.proj[1](pooled)), previous], -1)
    ref_h, ref_c = controller.cell(features, state)
    torch.testing.assert_close((h, c), (ref_h, ref_c))
    torch.testing.assert_close(logits, controller.head(ref_h) + controller.bias[1])
