"""The transform contract on the real built-in workloads (slow: trains them once when cold)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from envs.workloads import get_workload, list_workloads
from runners.build import BuildConfig, Subject, build_candidate
from runners.metrics import count_flops, count_params
from runners.onnxruntime import OnnxRuntimeCPU
from search_spaces import ACTIONS, Strategy
from search_spaces.actions.dynamic_skip.training import GateTrainConfig

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=list_workloads())
def subject(request, workload_cache):
    return Subject.prepare(get_workload(request.param, cache_dir=workload_cache))


def test_unchanged_strategy_accuracy_in_onnxruntime_equals_the_baseline(subject, tmp_path):
    wl = subject.workload
    candidate = build_candidate(subject, Strategy())

    compiled = OnnxRuntimeCPU().compile(candidate, tmp_path)
    outputs = np.concatenate([compiled.run(x.numpy()) for x, _ in wl.eval.batches(256)])

    accuracy = wl.metric(outputs, wl.eval.targets.numpy())
    assert accuracy == pytest.approx(wl.info["baseline_accuracy_torch"], abs=0.11)


@pytest.mark.parametrize("action", sorted(ACTIONS))
def test_every_action_builds_exports_and_runs_on_the_workload(subject, action, tmp_path):
    handler = ACTIONS[action]
    if not any(u.allows(action) for u in subject.units):
        pytest.skip(f"{subject.workload.name} has no unit that allows {action}")
    value = next(c for c in handler.choices if c != handler.identity)
    strategy = Strategy.from_dict({"*": {action: value}})
    x = subject.workload.eval.inputs[:8]

    # a dynamic-skip build trains its controller: a few steps are enough for the contract
    config = BuildConfig(gates=GateTrainConfig(warm_inputs=32, warm_epochs=2, reinforce_steps=2))
    candidate = build_candidate(subject, strategy, config)
    out = OnnxRuntimeCPU().compile(candidate, tmp_path).run(x.numpy())

    with torch.no_grad():
        ref = candidate.model(x).numpy()
    assert out.shape == ref.shape and np.isfinite(out).all()
    promise = handler.contract
    ex = subject.workload.example_input
    if promise.exact_export:
        np.testing.assert_allclose(out, ref, atol=1e-3, rtol=1e-3)
    else:  # int8: close to fp32 in ranking, not in value
        assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.75
    if promise.params == "fewer":
        assert count_params(candidate.model) < count_params(subject.model)
    elif promise.params == "same":
        assert count_params(candidate.model) == count_params(subject.model)
    if promise.fewer_flops:
        with handler.cheapest(candidate.model):
            assert count_flops(candidate.model, ex) < count_flops(subject.model, ex)
