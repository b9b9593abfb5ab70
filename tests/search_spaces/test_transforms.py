"""Behaviour specific to each transform (the shared contract is in test_actions_contract)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from search_spaces import (
    ActionNotAllowedError,
    InvalidActionValueError,
    Strategy,
    UnknownActionError,
    UnknownUnitError,
    apply_plan,
    canonicalize,
    discover_units,
    resolve,
)
from search_spaces.actions.lowrank import factorize
from search_spaces.actions.prune import kept_channels
from search_spaces.actions.skip import Skipped
from search_spaces.canonical import Attention

from models import make_model


def _subject(name: str):
    model, x = make_model(name)
    canonical = canonicalize(copy.deepcopy(model))
    return canonical, discover_units(canonical, x), x


def _apply(name: str, spec: dict):
    model, units, x = _subject(name)
    return apply_plan(model, units, resolve(Strategy.from_dict(spec), units), x)


def test_prune_removes_channels_of_the_whole_coupled_group():
    built, _ = _apply("resnet", {"conv1": {"prune": 0.5}})

    assert built.conv1.out_channels == 8
    assert built.layer1[0].conv2.out_channels == 8
    assert built.layer1[1].conv1.in_channels == 8
    assert built.layer1[0].conv1.out_channels == 16  # another group: untouched


def test_prune_keeps_at_least_one_channel_and_rounds_wide_layers_to_eight():
    assert kept_channels(16, 0.95) == 1
    assert kept_channels(64, 0.5) == 32
    assert kept_channels(64, 0.3) == 48  # 44.8 -> nearest multiple of 8
    assert kept_channels(128, 0.0) == 128


def test_prune_heads_removes_lowest_magnitude_heads_physically():
    model, units, x = _subject("transformer")
    attn = model.encoder.layers[0].self_attn
    with torch.no_grad():
        attn.q_proj.weight[8:16] *= 0.01  # head 1 becomes the weakest
        attn.k_proj.weight[8:16] *= 0.01
        attn.v_proj.weight[8:16] *= 0.01
        attn.out_proj.weight[:, 8:16] *= 0.01
    plan = resolve(Strategy.from_dict({"encoder.layers.0.self_attn": {"prune": 0.25}}), units)

    built, _ = apply_plan(model, units, plan, x)

    pruned = built.encoder.layers[0].self_attn
    assert isinstance(pruned, Attention)
    assert pruned.num_heads == 3
    assert pruned.q_proj.out_features == 24 and pruned.out_proj.in_features == 24
    kept = model.encoder.layers[0].self_attn.q_proj.weight[[*range(8), *range(16, 32)]]
    torch.testing.assert_close(pruned.q_proj.weight, kept)


def test_prune_ffn_width_of_a_transformer_layer():
    built, _ = _apply("transformer", {"encoder.layers.1.linear1": {"prune": 0.5}})

    assert built.encoder.layers[1].linear1.out_features == 32
    assert built.encoder.layers[1].linear2.in_features == 32


def test_skip_replaces_the_block_with_identity():
    model, units, x = _subject("resnet")
    plan = resolve(Strategy.from_dict({"layer1.1": {"skip": True}}), units)

    built, _ = apply_plan(model, units, plan, x)

    assert isinstance(built.layer1[1], Skipped)
    h = torch.relu(model.bn1(model.conv1(x)))
    with torch.no_grad():
        expected = model.fc(model.layer2(model.layer1[0](h)).mean((2, 3)))
        torch.testing.assert_close(built(x), expected)


def test_skip_ignores_actions_inside_the_skipped_block():
    built, precisions = _apply(
        "resnet", {"layer1.1": {"skip": True}, "layer1.1.conv1": {"precision": "int8"}}
    )

    assert isinstance(built.layer1[1], Skipped)
    assert "layer1.1.conv1" not in precisions


def test_lowrank_at_full_rank_reproduces_the_layer():
    layer = nn.Linear(12, 7)
    x = torch.randn(5, 12)

    two = factorize(layer, 1.0)

    with torch.no_grad():
        torch.testing.assert_close(two(x), layer(x), atol=1e-5, rtol=1e-4)


def test_lowrank_replaces_a_1x1_conv_by_two_thinner_convs():
    built, _ = _apply("depthwise", {"blocks.0.expand.0": {"lowrank": 0.5}})

    pair = built.blocks[0].expand[0]
    assert isinstance(pair, nn.Sequential)
    assert pair[0].out_channels == 8 and pair[1].in_channels == 8


def test_lowrank_on_a_3x3_conv_is_not_allowed():
    _, units, _ = _subject("resnet")

    with pytest.raises(ActionNotAllowedError, match="only 1×1"):
        resolve(Strategy.from_dict({"layer1.0.conv1": {"lowrank": 0.5}}), units)


def test_default_entry_applies_only_where_allowed_and_explicit_entries_override():
    _, units, _ = _subject("resnet")

    plan = resolve(
        Strategy.from_dict({"*": {"precision": "int8"}, "fc": {"precision": "fp32"}}), units
    )

    layers = {u.name for u in units if u.kind in ("conv", "linear")}
    assert set(plan.actions) == layers - {"fc"}


@pytest.mark.parametrize(
    ("spec", "error", "fragment"),
    [
        ({"layer9.conv1": {"prune": 0.5}}, UnknownUnitError, "no decision unit 'layer9.conv1'"),
        (
            {"layer1.0.conv1": {"prune": 1.5}},
            InvalidActionValueError,
            "'layer1.0.conv1'.*\\[0, 0.95\\]",
        ),
        ({"layer1.0.conv1": {"prune": "half"}}, InvalidActionValueError, "must be a number"),
        ({"*": {"precision": "int4"}}, InvalidActionValueError, "'\\*'.*one of"),
        (
            {"layer1.0.conv1": {"skip": True}},
            ActionNotAllowedError,
            "'skip'.*'layer1.0.conv1'.*not a residual block",
        ),
        ({"layer2.0": {"skip": True}}, ActionNotAllowedError, "changes the shape"),
        ({"layer1.0.conv2": {"prune": 0.5}}, ActionNotAllowedError, "coupled.*'conv1'"),
        ({"layer1.0.conv1": {"sparsify": 0.5}}, UnknownActionError, "known actions"),
        ({"layer1.0": {"skip": "yes"}}, InvalidActionValueError, "true or false"),
    ],
)
def test_bad_strategy_raises_a_typed_error_naming_unit_and_rule(spec, error, fragment):
    _, units, _ = _subject("resnet")

    with pytest.raises(error, match=fragment):
        resolve(Strategy.from_dict(spec), units)


def test_identity_value_on_a_masked_unit_is_accepted():
    _, units, _ = _subject("resnet")

    plan = resolve(Strategy.from_dict({"layer1.0.conv1": {"skip": False}}), units)

    assert not plan
