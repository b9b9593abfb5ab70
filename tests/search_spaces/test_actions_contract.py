"""The contract every action must pass, on every test model (and, slow, every workload).

For an action applied with its first non-identity choice to every unit that allows it
(``{"*": {action: value}}``): the model builds, keeps its output shape, is deterministic, rebuilds
identically from the strategy's JSON, exports to ONNX and runs in ONNX Runtime with the same
outputs as torch, leaves the original model untouched, and reduces what the action promises.
"""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch

from runners.base import Candidate
from runners.metrics import count_flops, count_params
from search_spaces import ACTIONS, Strategy, apply_plan, canonicalize, discover_units, resolve

from models import TEST_MODELS, make_model


def _first_change(action: str):
    return next(c for c in ACTIONS[action].choices if c != ACTIONS[action].identity)


@functools.cache
def _subject(model_name: str):
    """Model, example input, canonical copy and units: discovered once per test model."""
    model, x = make_model(model_name)
    canonical = canonicalize(copy.deepcopy(model))
    return model, x, canonical, discover_units(canonical, x)


def _build(model_name, strategy):
    _, x, canonical, units = _subject(model_name)
    return apply_plan(canonical, units, resolve(strategy, units), x)


CASES = [(m, a) for m in TEST_MODELS for a in sorted(ACTIONS)]


@pytest.fixture(params=CASES, ids=[f"{m}-{a}" for m, a in CASES])
def case(request):
    model_name, action = request.param
    model, x, _, units = _subject(model_name)
    if not any(u.allows(action) for u in units):
        pytest.skip(f"{model_name} has no unit that allows {action}")
    strategy = Strategy.from_dict({"*": {action: _first_change(action)}})
    return model_name, model, x, action, strategy


def test_action_builds_with_the_same_output_shape_and_finite_outputs(case):
    name, model, x, _, strategy = case
    batch = torch.randn(3, *x.shape[1:])

    built, _ = _build(name, strategy)

    with torch.no_grad():
        out, ref = built(batch), model(batch)
    assert out.shape == ref.shape
    assert torch.isfinite(out).all()


def test_action_is_deterministic_and_rebuilds_from_json(case):
    name, _, x, _, strategy = case

    a, prec_a = _build(name, strategy)
    b, prec_b = _build(name, Strategy.from_json(strategy.to_json()))

    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), atol=0, rtol=0)
    assert prec_a == prec_b
    assert [tuple(p.shape) for p in a.parameters()] == [tuple(p.shape) for p in b.parameters()]


def test_action_leaves_the_original_model_untouched(case):
    name, _, _, _, strategy = case
    canonical = _subject(name)[2]
    before = {k: v.clone() for k, v in canonical.state_dict().items()}

    _build(name, strategy)

    after = canonical.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_action_reduces_what_it_promises(case):
    name, model, x, action, strategy = case
    handler = ACTIONS[action]
    promise = handler.contract

    built, precisions = _build(name, strategy)

    if promise.lowers_precision:
        assert precisions and set(precisions.values()) == {_first_change(action)}
    if promise.params == "same":
        assert count_params(built) == count_params(model)
    elif promise.params == "fewer":
        assert count_params(built) < count_params(model)
    if promise.fewer_flops:
        with handler.cheapest(built):
            assert count_flops(built, x) < count_flops(model, x)
    if promise.outputs_unchanged:
        with torch.no_grad():
            torch.testing.assert_close(built(x), model(x), atol=1e-5, rtol=1e-5)
    # every action promises something the suite checks
    assert promise.lowers_precision or promise.params != "any" or promise.fewer_flops


def test_every_registered_action_states_its_contract():
    # the promises the suite checks for the built-in actions (a new action states its own)
    promises = {name: handler.contract for name, handler in ACTIONS.items()}

    assert promises["precision"].lowers_precision and promises["precision"].params == "same"
    assert not promises["precision"].exact_export
    assert promises["dynamic_skip"].fewer_flops and promises["dynamic_skip"].outputs_unchanged
    for name in ("prune", "lowrank", "skip"):
        assert promises[name].params == "fewer" and promises[name].fewer_flops


def test_action_exports_to_onnx_and_runs_in_onnxruntime(case, tmp_path):
    from runners.onnxruntime import OnnxRuntimeCPU

    name, _, x, _, strategy = case
    built, precisions = _build(name, strategy)
    calibration = torch.randn(16, *x.shape[1:], generator=torch.Generator().manual_seed(3))
    batch = torch.randn(4, *x.shape[1:], generator=torch.Generator().manual_seed(4))

    compiled = OnnxRuntimeCPU().compile(
        Candidate(built, x, precisions, calibration if precisions else None), tmp_path
    )
    out = compiled.run(batch.numpy())

    with torch.no_grad():
        ref = built(batch).numpy()
    assert out.shape == ref.shape
    if precisions:  # int8: close to fp32 in ranking, not in value
        assert np.isfinite(out).all()
        assert np.corrcoef(out.ravel(), ref.ravel())[0, 1] > 0.9
    else:
        np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("model_name", list(TEST_MODELS))
def test_identity_strategy_leaves_outputs_unchanged(model_name):
    model, x, _, _ = _subject(model_name)
    batch = torch.randn(3, *x.shape[1:])

    built, precisions = _build(model_name, Strategy())

    with torch.no_grad():
        torch.testing.assert_close(built(batch), model(batch), atol=1e-5, rtol=1e-5)
    assert precisions == {}
