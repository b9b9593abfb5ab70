"""Random, uniform and TPE agents against the shared DecisionSpace."""

from __future__ import annotations

import numpy as np
import pytest

from agent.baselines import RandomAgent, TPEAgent, UniformAgent, uniform_grid, uniform_seeds
from agent.records import CandidateRecord
from runners.job import Outcome
from search_spaces import canonicalize, discover_units, resolve
from search_spaces.space import DecisionSpace

from models import make_model


@pytest.fixture(scope="module")
def space() -> DecisionSpace:
    model, x = make_model("resnet")
    return DecisionSpace(discover_units(canonicalize(model), x))


def record(index: int, proposal, reward: float) -> CandidateRecord:
    outcome = Outcome(proposal.strategy, "ok", {"accuracy_drop": 0.0, "speedup": 1.0})
    return CandidateRecord(index, outcome, reward, "test", extras=proposal.extras)


def test_random_is_seeded_and_legal(space: DecisionSpace) -> None:
    a = [RandomAgent(space, seed=3).ask() for _ in range(1)]
    b = [RandomAgent(space, seed=3).ask() for _ in range(1)]
    assert a[0].strategy == b[0].strategy
    agent = RandomAgent(space, seed=4)
    for _ in range(20):
        resolve(agent.ask().strategy, space.units)


def test_uniform_grid_is_distinct_and_same_setting_everywhere(space: DecisionSpace) -> None:
    grid = uniform_grid(space)
    assert len({s.key() for s in grid}) == len(grid)
    assert grid[0].is_identity
    for strategy in grid:
        values = {
            (name, value)
            for acts in strategy.units.values()
            for name, value in acts.items()
            if name != "skip"
        }
        per_action = {}
        for name, value in values:
            per_action.setdefault(name, set()).add(value)
        assert all(len(v) == 1 for v in per_action.values())


def test_uniform_agent_exhausts_its_grid(space: DecisionSpace) -> None:
    agent = UniformAgent(space)
    proposals = []
    while (p := agent.ask()) is not None:
        proposals.append(p)
    assert agent.exhausted
    assert len(proposals) == len(uniform_grid(space)) - 1  # the identity is the baseline


def int8_units(strategy) -> float:
    return float(sum(a.get("precision") == "int8" for a in strategy.units.values()))


def test_tpe_concentrates_on_rewarded_region(space: DecisionSpace) -> None:
    """Reward = number of int8 units: after its startup trials TPE proposes more int8."""
    agent = TPEAgent(space, seed=0, startup=10)

    scores = []
    for i in range(40):
        p = agent.ask()
        scores.append(int8_units(p.strategy))
        agent.tell(record(i, p, scores[-1]))
    assert np.mean(scores[-10:]) > np.mean(scores[:10])


def test_tpe_restored_from_records_continues_where_it_left_off(space: DecisionSpace) -> None:
    """Resume: a fresh TPE told the earlier candidates as evaluated points proposes like one
    that saw them (past its startup trials, it exploits), and never re-suggests their ids."""
    agent = TPEAgent(space, seed=0, startup=10)

    earlier = []
    for i in range(30):
        p = agent.ask()
        earlier.append(record(i, p, int8_units(p.strategy)))
        agent.tell(earlier[-1])
    cold = TPEAgent(space, seed=1, startup=10)
    resumed = TPEAgent(space, seed=1, startup=10)
    resumed.restore(earlier)

    assert resumed._count == 30  # trial ids continue after the restored ones
    assert len(resumed._searcher._ot_study.trials) == 30
    cold_scores, resumed_scores = [], []
    for i in range(10):
        for agent_, scores in ((cold, cold_scores), (resumed, resumed_scores)):
            p = agent_.ask()
            scores.append(int8_units(p.strategy))
            agent_.tell(record(30 + i, p, scores[-1]))
    assert np.mean(resumed_scores) > np.mean(cold_scores)  # it learned from the restored points


def test_uniform_seeds_are_the_hand_pipeline_one_setting_everywhere(space: DecisionSpace) -> None:
    seeds = uniform_seeds(space)
    grid = {s.key() for s in uniform_grid(space)}
    assert seeds and len({s.key() for s in seeds}) == len(seeds)
    assert all(s.key() in grid and not s.is_identity for s in seeds)
    assert not any(a.get("skip") for s in seeds for a in s.units.values())  # no unit removed
    precisions = [{a.get("precision", "fp32") for a in s.units.values()} for s in seeds]
    assert precisions[0] == {"int8"} and set(seeds[0].units) == {
        st.unit.name for st in space.steps if "precision" in st.options
    }  # the collective value alone, everywhere
    prunes = {v for s in seeds for a in s.units.values() if (v := a.get("prune"))}
    assert prunes == set(space.values("prune")[1:])
    # each prune level both quantized and not: the hand pipeline's "prune r, then int8"
    for ratio in prunes:
        with_prune = [p for s, p in zip(seeds, precisions, strict=True)
                      if any(a.get("prune") == ratio for a in s.units.values())]  # fmt: skip
        assert {"int8"} in with_prune and {"fp32"} in with_prune


def test_tpe_learns_from_records_it_did_not_propose(space: DecisionSpace) -> None:
    """A seed (or a promotion at a higher fidelity) is an evaluated point for TPE."""
    agent = TPEAgent(space, seed=0, startup=10)
    for i, seed in enumerate(uniform_seeds(space)):
        outcome = Outcome(seed, "ok", {"accuracy_drop": 0.0, "speedup": 1.0})
        agent.tell(CandidateRecord(i, outcome, float(i), "seed"))
    assert len(agent._searcher._ot_study.trials) == len(uniform_seeds(space))
