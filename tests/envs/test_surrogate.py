"""The cost table and the surrogate fitted on measurements."""

from __future__ import annotations

import math

import numpy as np
import pytest

from envs.cost import flops_cost_model, probe_cost_model, probe_plan, probe_strategy
from envs.reward import Score
from envs.surrogate import Surrogate
from search_spaces import canonicalize, discover_units
from search_spaces.space import DecisionSpace

from models import make_model


@pytest.fixture(scope="module")
def space() -> DecisionSpace:
    model, x = make_model("resnet")
    return DecisionSpace(discover_units(canonicalize(model), x))


def test_probe_plan_covers_every_non_identity_choice_once(space: DecisionSpace) -> None:
    plan = probe_plan(space)
    expected = sum(len(v) - 1 for s in space.steps for v in s.options.values())
    assert len(plan) == len(set(plan)) == expected
    for probe in plan:
        assert len(probe_strategy(space, probe).units) == 1


def test_probe_table_reproduces_single_probe_measurements(space: DecisionSpace) -> None:
    plan = probe_plan(space)
    results = {p: Score(0.1 * i, 1.0 + 0.01 * i, 1.0 + 0.01 * i) for i, p in enumerate(plan)}
    cost = probe_cost_model(space, results)
    for i, probe in enumerate(plan):
        choices = space.from_strategy(probe_strategy(space, probe))
        lat, drop = cost.estimate(choices)
        assert math.exp(-lat) == pytest.approx(1.0 + 0.01 * i)
        assert drop == pytest.approx(0.1 * i)


def test_failed_probe_is_priced_as_harmful(space: DecisionSpace) -> None:
    plan = probe_plan(space)
    cost = probe_cost_model(space, {plan[0]: None})
    choices = space.from_strategy(probe_strategy(space, plan[0]))
    assert cost.estimate(choices)[1] >= 50.0


def test_surrogate_learns_an_interaction_the_table_misses(space: DecisionSpace) -> None:
    """Truth: drops compound (quadratic in the count); the table alone is additive."""
    cost = flops_cost_model(space)
    rng = np.random.default_rng(0)

    def truth(strategy):
        n = sum(len(a) for a in strategy.units.values())
        return Score(accuracy_drop=0.05 * n * n, speedup=1.0 + 0.1 * n, ideal_speedup=1.0)

    train = [space.to_strategy(space.sample(rng)) for _ in range(60)]
    test = [space.to_strategy(space.sample(rng)) for _ in range(30)]
    surrogate = Surrogate(space, cost)
    before = np.mean([abs(surrogate.predict(s)[1] - truth(s).accuracy_drop) for s in test])
    surrogate.fit([(s, truth(s)) for s in train])
    after = np.mean([abs(surrogate.predict(s)[1] - truth(s).accuracy_drop) for s in test])
    assert after < 0.5 * before


def test_surrogate_returns_none_for_known_failures(space: DecisionSpace) -> None:
    surrogate = Surrogate(space, flops_cost_model(space))
    bad = space.to_strategy(space.sample(np.random.default_rng(1)))
    surrogate.fit([(bad, None)])
    assert surrogate(bad) is None
    good = surrogate(space.to_strategy(space.identity()))
    assert good is not None and good.predicted and good.speedup == pytest.approx(1.0)
