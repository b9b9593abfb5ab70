"""DecisionSpace: the index encoding every agent shares."""

from __future__ import annotations

import numpy as np
import pytest

from search_spaces import Strategy, canonicalize, discover_units
from search_spaces.space import DecisionSpace

from models import make_model


@pytest.fixture(scope="module")
def space() -> DecisionSpace:
    model, x = make_model("resnet")
    return DecisionSpace(discover_units(canonicalize(model), x))


def test_space_steps_are_units_with_a_choice(space: DecisionSpace) -> None:
    assert len(space) > 0
    for step in space.steps:
        assert step.options
        for name, values in step.options.items():
            assert step.unit.allows(name)
            assert len(values) > 1


def test_identity_choices_give_the_identity_strategy(space: DecisionSpace) -> None:
    assert space.to_strategy(space.identity()).is_identity


def test_legalize_maps_masked_action_to_identity(space: DecisionSpace) -> None:
    skip = space.action_names.index("skip")
    step = next(i for i, s in enumerate(space.steps) if "skip" not in s.options)
    choice = np.zeros_like(space.nvec)
    choice[skip] = 1
    assert space.legalize(step, choice)[skip] == 0
    assert not space.mask(step)[int(space.nvec[:skip].sum()) + 1]


def test_legalize_clips_out_of_range_index(space: DecisionSpace) -> None:
    prune = space.action_names.index("prune")
    step = next(i for i, s in enumerate(space.steps) if "prune" in s.options)
    choice = np.zeros_like(space.nvec)
    choice[prune] = 99
    assert space.legalize(step, choice)[prune] == len(space.steps[step].options["prune"]) - 1


def test_skipped_block_drops_actions_inside_it(space: DecisionSpace) -> None:
    choices = space.identity()
    block = next(i for i, s in enumerate(space.steps) if "skip" in s.options)
    name = space.steps[block].unit.name
    inner = next(i for i, s in enumerate(space.steps) if s.unit.name.startswith(name + "."))
    choices[block][space.action_names.index("skip")] = 1
    choices[inner][space.action_names.index("precision")] = 1
    strategy = space.to_strategy(choices)
    assert strategy.units == {name: {"skip": True}}


def test_strategy_round_trips_through_indices(space: DecisionSpace) -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        strategy = space.to_strategy(space.sample(rng))
        again = space.to_strategy(space.from_strategy(strategy))
        assert again == strategy


def test_parameters_round_trip(space: DecisionSpace) -> None:
    params = space.parameters()
    first = next(iter(params))
    chosen = {first: params[first][1]}
    strategy = space.from_parameters(chosen)
    unit, _, action = first.rpartition(":")
    assert strategy.units[unit][action] == params[first][1]


def test_from_strategy_rejects_value_outside_the_search(space: DecisionSpace) -> None:
    unit = next(s.unit.name for s in space.steps if "prune" in s.options)
    with pytest.raises(ValueError, match="not one of the searched values"):
        space.from_strategy(Strategy.from_dict({unit: {"prune": 0.3}}))


def test_precisions_restrict_the_precision_values(space: DecisionSpace) -> None:
    only_fp32 = DecisionSpace(space.units, precisions=["fp32"])
    assert all("precision" not in s.options for s in only_fp32.steps)
    gpu = DecisionSpace(space.units, precisions={"fp16", "int8", "fp32"})
    assert gpu.values("precision") == ("fp32", "fp16", "int8")
