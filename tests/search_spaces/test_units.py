from __future__ import annotations

import copy

import pytest
import torch

from search_spaces import UnknownUnitError, canonicalize, discover_units

from models import make_model


def _units(name: str):
    model, x = make_model(name)
    return discover_units(canonicalize(copy.deepcopy(model)), x)


def test_canonicalize_keeps_transformer_outputs_equal():
    model, x = make_model("transformer")
    x = torch.randn(5, *x.shape[1:])

    canonical = canonicalize(copy.deepcopy(model))

    with torch.no_grad():
        torch.testing.assert_close(canonical(x), model(x), atol=1e-5, rtol=1e-5)


def test_residual_stream_layers_are_coupled_to_one_representative():
    units = _units("resnet")

    assert units.get("layer1.0.conv2").coupled_to == "conv1"
    assert units.get("layer1.1.conv2").coupled_to == "conv1"
    assert set(units.get("conv1").prune_group) == {"conv1", "layer1.0.conv2", "layer1.1.conv2"}
    assert "coupled" in units.get("layer1.0.conv2").allowed["prune"]
    assert units.get("layer1.0.conv1").allows("prune")


def test_depthwise_conv_is_coupled_to_its_expand_conv():
    units = _units("depthwise")

    assert units.get("blocks.0.depthwise.0").coupled_to == "blocks.0.expand.0"
    assert units.get("blocks.0.depthwise.0").groups == 64


def test_output_layer_prune_is_masked_with_reason():
    reason = _units("resnet").get("fc").allowed["prune"]

    assert reason is not None and "feeds the model output" in reason


def test_shape_changing_block_is_not_skippable():
    units = _units("resnet")

    assert units.get("layer1.1").skippable
    assert not units.get("layer2.0").skippable
    assert "changes the shape" in units.get("layer2.0").allowed["skip"]


def test_transformer_layers_are_blocks_and_attention_units_have_heads():
    units = _units("transformer")

    attn = units.get("encoder.layers.0.self_attn")
    assert attn.kind == "attention" and attn.heads == 4 and attn.allows("prune")
    assert units.get("encoder.layers.1").skippable
    assert units.get("encoder.layers.0.linear1").allows("prune")  # FFN width
    assert "attention unit" in units.get("encoder.layers.0.self_attn.q_proj").allowed["prune"]


def test_tuple_returning_layers_skip_and_attention_it_cannot_read_is_masked():
    units = _units("bert")

    layer = units.get("layers.0")
    assert layer.allows("skip") and layer.output_items == 1  # returns (hidden,)
    assert "tuple" in layer.allowed["dynamic_skip"]
    # query/key/value are coupled through a reshape torch-pruning cannot follow: trial-pruning
    # shows it, and the action is masked with the error instead of breaking a search later.
    assert "breaks the model" in units.get("layers.0.attention.query").allowed["prune"]
    assert units.get("layers.0.intermediate").allows("prune")


def test_units_are_in_execution_order_with_consecutive_indices():
    units = _units("resnet")

    assert [u.index for u in units] == list(range(len(units)))
    assert units.names.index("layer1.0") < units.names.index("layer1.0.conv1")
    assert units.names[-1] == "fc"


def test_flops_shares_of_layers_sum_to_at_most_one():
    units = _units("resnet")

    layer_share = sum(u.flops_share for u in units if u.kind in ("conv", "linear"))

    assert 0.95 <= layer_share <= 1.0 + 1e-6
    assert units.total_flops > 0


def test_embedding_has_a_fixed_length_across_unit_kinds():
    units = _units("transformer")

    lengths = {u.embedding(len(units)).shape for u in units}

    assert len(lengths) == 1


def test_unknown_unit_suggests_close_names():
    with pytest.raises(UnknownUnitError, match=r"did you mean .*'layer1\.0\.conv1'"):
        _units("resnet").get("layer1.0.conv")
