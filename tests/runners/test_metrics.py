"""FLOP and parameter counts."""

from __future__ import annotations

import torch
from torch import nn

from runners.metrics import count_flops, count_params, flops_by_module

from models import make_model


def test_count_flops_is_two_macs_of_one_sample():
    linear = nn.Linear(4, 3)
    conv = nn.Conv2d(2, 5, 3, padding=1, bias=False)

    assert count_flops(linear, torch.randn(7, 4)) == 2 * 4 * 3  # batch 7 counts as 1
    assert count_flops(conv, torch.randn(1, 2, 6, 6)) == 2 * (2 * 9) * 5 * 36


def test_flops_by_module_is_inclusive_and_totals_the_model():
    model, x = make_model("resnet")

    per_module = flops_by_module(model, x)

    assert per_module[""] == count_flops(model, x)
    assert per_module["layer1"] == per_module["layer1.0"] + per_module["layer1.1"]
    assert per_module["layer1.0.conv1"] == 2 * (16 * 9) * 16 * 16 * 16


def test_flops_count_attention_matmuls_even_with_the_fast_path_on():
    model, x = make_model("transformer")
    assert torch.backends.mha.get_fastpath_enabled()

    per_module = flops_by_module(model, x)

    attention = per_module["encoder.layers.0.self_attn"]
    # in-projection 3·(8×32×32), out-projection 8×32×32, scores and weighted sum 2·(8×8×32)
    assert attention == 2 * (4 * 8 * 32 * 32 + 2 * 8 * 8 * 32)
    assert per_module[""] > per_module["embed"] + per_module["fc"] + 2 * attention
    assert torch.backends.mha.get_fastpath_enabled()


def test_count_params_counts_each_parameter_once():
    shared = nn.Linear(3, 3)
    model = nn.Sequential(shared, shared)

    assert count_params(model) == 12
