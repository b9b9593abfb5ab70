"""Non-RL baselines in the same harness as PPO: random, uniform and TPE.

- ``random``: every per-unit choice uniformly at random (seeded).
- ``uniform``: one setting for all units — each prune level × precision × low-rank ratio, and
  the same with every skippable block skipped (every unit an action removes) — in order of
  increasing aggressiveness. A small
  grid (tens of candidates): it is exhausted before a budget of 100.
- ``tpe``: Optuna's TPE sampler through Ray Tune's ``OptunaSearch`` searcher, with one
  categorical per (unit, action) as its search space and the search's reward as its objective.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from agent.base import Proposal
from agent.records import CandidateRecord
from search_spaces.actions import get_action, removes_unit
from search_spaces.space import DecisionSpace
from search_spaces.strategy import Strategy


class _Baseline:
    """What the baselines share: nothing to learn between measurements, nothing to release."""

    name = "baseline"

    def tell(self, record: CandidateRecord) -> None:
        pass

    def think(self) -> None:
        pass

    @property
    def exhausted(self) -> bool:
        return False

    def close(self) -> None:
        pass


class RandomAgent(_Baseline):
    """Uniformly random legal choices at every step."""

    name = "random"

    def __init__(self, space: DecisionSpace, seed: int = 0) -> None:
        self.space = space
        self.rng = np.random.default_rng(seed)

    def ask(self) -> Proposal | None:
        return Proposal(self.space.to_strategy(self.space.sample(self.rng)))


def everywhere(space: DecisionSpace, settings: dict[str, Any]) -> Strategy:
    """The strategy that sets each ``action: value`` of ``settings`` on every unit offering it."""
    names = space.action_names
    choices = space.identity()
    for step, choice in zip(space.steps, choices, strict=True):
        for name, value in settings.items():
            options = step.options.get(name, ())
            if value in options:
                choice[names.index(name)] = options.index(value)
    return space.to_strategy(choices)


def uniform_grid(space: DecisionSpace) -> list[Strategy]:
    """Every "same setting on all units" strategy, distinct, least aggressive first.

    An action that removes units (skip) is one on/off dimension — its removing value on every
    unit that offers it — and counts twice towards aggressiveness; every other action is a
    dimension over its values.
    """
    removing = {
        name: value
        for name in space.action_names
        if (value := next((v for v in space.values(name) if removes_unit(name, v)), None))
        is not None
    }
    searched = [name for name in space.action_names if name not in removing]
    grids = [range(len(space.values(name))) for name in searched]
    flags: list[tuple[bool, ...]] = [(False, True)] * len(removing) or [(False,)]
    n_flags = len(flags)

    def aggressiveness(c: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
        return sum(c[n_flags:]) + 2 * sum(c[:n_flags]), c

    combos = sorted(itertools.product(*flags, *grids), key=aggressiveness)
    out: list[Strategy] = []
    seen: set[str] = set()
    for combo in combos:
        removes, indices = combo[:n_flags], combo[n_flags:]
        settings = {name: space.values(name)[i] for name, i in zip(searched, indices, strict=True)}
        pairs = zip(removing.items(), removes, strict=False)  # one False flag when none remove
        settings.update(pair for pair, on in pairs if on)
        strategy = everywhere(space, settings)
        if strategy.key() not in seen:
            seen.add(strategy.key())
            out.append(strategy)
    return out


def uniform_seeds(space: DecisionSpace) -> list[Strategy]:
    """The hand pipeline's strategies, which a search measures before its agent proposes.

    What a user tries by hand first is one setting everywhere: prune every layer by r, then
    quantize the lot. So: the collective actions' (precision's) fastest value on every unit,
    alone, and each value of every other action that keeps the unit (prune levels, low rank)
    on every unit that offers it, with and without the collective values (on small layers a
    quantize pair can cost more than int8 saves). Actions that remove units (skip) are left
    out: removing every block is never worth measuring. "Fastest" is by the handler's FLOP
    saving, so nothing here names an action. Every agent starts from the same seeds, so the
    comparison between agents stays fair.
    """
    names = space.action_names
    collective: dict[str, Any] = {}
    for name in names:
        if get_action(name).collective and len(space.values(name)) > 1:
            values = space.values(name)[1:]
            collective[name] = max(values, key=get_action(name).flops_saving)
    widths = [
        (name, value)
        for name in names
        if name not in collective
        for value in space.values(name)[1:]
        if not removes_unit(name, value)
    ]
    out: list[Strategy] = []
    seen: set[str] = set()
    combos = [collective] + [
        {**together, name: value} for name, value in widths for together in (collective, {})
    ]
    for settings in combos:
        strategy = everywhere(space, settings)
        if not strategy.is_identity and strategy.key() not in seen:
            seen.add(strategy.key())
            out.append(strategy)
    return out


class UniformAgent(_Baseline):
    """Walks `uniform_grid` (the identity strategy excluded: it is the baseline)."""

    name = "uniform"

    def __init__(self, space: DecisionSpace, seed: int = 0) -> None:
        del seed  # deterministic by construction
        self._grid = [s for s in uniform_grid(space) if not s.is_identity]
        self._next = 0

    def ask(self) -> Proposal | None:
        if self._next >= len(self._grid):
            return None
        self._next += 1
        return Proposal(self._grid[self._next - 1])

    @property
    def exhausted(self) -> bool:
        return self._next >= len(self._grid)


class TPEAgent(_Baseline):
    """Optuna TPE via Ray Tune's ``OptunaSearch`` (its ``suggest``/``on_trial_complete`` API,
    without Tune's trial runner: the driver owns evaluation, caching and tracking)."""

    name = "tpe"

    def __init__(self, space: DecisionSpace, seed: int = 0, startup: int = 10) -> None:
        import optuna
        from optuna.distributions import BaseDistribution, CategoricalDistribution
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.space = space
        self._params = space.parameters()
        distributions: dict[str, BaseDistribution] = {
            key: CategoricalDistribution(values) for key, values in self._params.items()
        }
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)
        self._searcher = OptunaSearch(
            distributions, metric="reward", mode="max", sampler=sampler, seed=seed
        )
        self._pending: dict[str, str] = {}  # strategy key -> trial id
        self._count = 0

    def ask(self) -> Proposal | None:
        trial_id = f"t{self._count:05d}"
        self._count += 1
        params: dict[str, Any] | None = self._searcher.suggest(trial_id)
        if params is None:
            return None
        strategy = self.space.from_parameters(params)
        self._pending.setdefault(strategy.key(), trial_id)
        return Proposal(strategy, {"trial": trial_id})

    def restore(self, records: list[CandidateRecord]) -> None:
        """Resume: give TPE every earlier candidate as an evaluated point."""
        for record in records:
            try:
                params = self.space.to_parameters(record.strategy)
            except ValueError:  # not expressible in this space (a cache hit from elsewhere)
                continue
            self._searcher.add_evaluated_point(
                params, record.reward, error=not math.isfinite(record.reward)
            )
        self._count = len(records)

    def tell(self, record: CandidateRecord) -> None:
        # the live trial that proposed this strategy, if any
        trial_id = self._pending.pop(record.strategy.key(), None)
        if trial_id is not None:
            self._searcher.on_trial_complete(trial_id, {"reward": record.reward})
            return
        # a seed, or a promotion measured at a higher fidelity: an evaluated point all the same
        try:
            params = self.space.to_parameters(record.strategy)
        except ValueError:
            return
        self._searcher.add_evaluated_point(
            params, record.reward, error=not math.isfinite(record.reward)
        )
