"""Controller training: the oracle's decisions, the price knob and determinism."""

from __future__ import annotations

import copy

import torch

from search_spaces import Strategy, apply_plan, canonicalize, discover_units, resolve
from search_spaces.actions.dynamic_skip.training import (
    GateTrainConfig,
    fidelity,
    gate_statistics,
    oracle_decisions,
    train_controller,
)

from models import make_model

FAST = GateTrainConfig(warm_inputs=48, warm_epochs=20, reinforce_steps=5, batch_size=16)


def _gated(alpha: float):
    model, x = make_model("resnet")
    canonical = canonicalize(copy.deepcopy(model))
    units = discover_units(canonical, x)
    spec = {u.name: {"dynamic_skip": alpha} for u in units if u.skippable}
    built, _ = apply_plan(canonical, units, resolve(Strategy(spec), units), x)
    inputs = torch.randn(64, *x.shape[1:], generator=torch.Generator().manual_seed(0))
    return built, inputs


def test_fidelity_is_zero_when_equal_and_adds_the_flip_cost_to_a_clipped_kl():
    logits = torch.randn(4, 10)
    far = -100 * torch.nn.functional.one_hot(logits.argmax(1), 10).float()

    assert torch.allclose(fidelity(logits, logits, 1.0), torch.zeros(4), atol=1e-6)
    assert torch.all(fidelity(far, logits, 1.0) == 5.0 + 5.0)  # KL clipped, plus the flip


def test_oracle_runs_everything_when_blocks_are_free_and_nothing_when_priceless():
    built, inputs = _gated(1.0)
    alphas = torch.zeros(len(built.gated))

    free, features = oracle_decisions(built, inputs, alphas, 1.0)
    costly, _ = oracle_decisions(built, inputs, alphas + 1000.0, 1.0)

    assert bool(free.all()) and not bool(costly.any())
    assert len(features) == len(built.gated) and features[0].shape[0] == len(inputs)


def test_oracle_decisions_are_per_input_and_improve_the_objective():
    built, inputs = _gated(1.0)
    k = len(built.gated)
    with torch.no_grad(), built.forced(True):
        full = built(inputs)
    # a price near the typical damage of skipping one block splits the inputs
    with torch.no_grad(), built.deciding(torch.zeros(len(inputs), k)):
        damage = fidelity(built(inputs), full, 1.0)
    alphas = torch.full((k,), float(damage.median()))

    decisions, _ = oracle_decisions(built, inputs, alphas, 1.0)

    with torch.no_grad(), built.deciding(decisions):
        chosen = fidelity(built(inputs), full, 1.0) + (decisions * alphas).sum(1) / k
    assert torch.all(chosen <= alphas.sum() / k + 1e-6)  # never worse than running all
    assert 0 < float(decisions.mean()) < 1


def test_price_knob_moves_the_trained_controller_from_running_to_skipping():
    cheap, inputs = _gated(1e-6)
    dear, _ = _gated(1000.0)

    train_controller(cheap, inputs, FAST)
    train_controller(dear, inputs, FAST)

    assert gate_statistics(cheap, inputs)["executed_share"] == 1.0
    assert gate_statistics(dear, inputs)["executed_share"] == 0.0


def test_training_is_deterministic_for_a_seed():
    a, inputs = _gated(1.0)
    b, _ = _gated(1.0)

    train_controller(a, inputs, FAST)
    train_controller(b, inputs, FAST)

    sa, sb = a.controller.state_dict(), b.controller.state_dict()
    assert all(torch.equal(sa[key], sb[key]) for key in sa)
