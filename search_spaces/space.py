"""The search space of one model: which choices each decision unit offers, as integer indices.

Agents do not see strategy JSON; they pick one index per action at each *step* (a unit that has
at least one action with a real choice). `DecisionSpace` turns those indices into a `Strategy`
and back, so the RL env, the baselines and the surrogate all share one encoding:

- every step offers the same action dimensions (``action_names``), one ``Discrete`` each, of
  width ``nvec[i]`` (the largest choice list of that action);
- index 0 is always the identity (leave the unit as it is);
- an index that a unit does not allow (the action is masked on it, or the unit has fewer
  choices) is mapped to the nearest legal one by :meth:`DecisionSpace.legalize`: a masked action
  becomes the identity, an index past a unit's choices becomes its last choice. Agents also get
  :meth:`DecisionSpace.mask` so they can learn to avoid them; nothing ever crashes on one.

Example:
    >>> space = DecisionSpace(subject.units)  # doctest: +SKIP
    >>> space.to_strategy(space.sample(np.random.default_rng(0)))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from search_spaces.actions import ACTIONS, default_actions, get_action
from search_spaces.strategy import Strategy
from search_spaces.units import Unit, UnitTable

Choices = np.ndarray
"""One step's choice: an int array of length ``len(space.action_names)``."""


@dataclass(frozen=True)
class Step:
    """One decision of an episode: a unit and the values each action offers on it."""

    unit: Unit
    options: Mapping[str, tuple[Any, ...]]
    """Action name -> allowed JSON values, identity first (only actions allowed on the unit)."""


class DecisionSpace:
    """The per-step choices over one model's decision units.

    Args:
        units: The model's decision units.
        actions: Action names to search (default: the registered actions searched by default;
            an action may be opt-in, see ``ActionHandler.searched_by_default``).
        precisions: Precisions the runtime runs (default: unknown, every action offers its
            choices); an action that sets a precision offers only these
            (``ActionHandler.offered_choices``).
    """

    def __init__(
        self,
        units: UnitTable,
        actions: Sequence[str] | None = None,
        precisions: Collection[str] | None = None,
    ) -> None:
        names = sorted(actions if actions is not None else default_actions())
        for name in names:
            get_action(name)  # unknown names fail here, listing the known ones
        self.units = units
        self.action_names: tuple[str, ...] = tuple(names)
        self._values: dict[str, tuple[Any, ...]] = {}
        runs = None if precisions is None else frozenset(precisions)
        for name in names:
            self._values[name] = tuple(get_action(name).offered_choices(runs))
        self.steps: tuple[Step, ...] = tuple(
            step for unit in units if (step := self._step(unit)) is not None
        )
        self.nvec = np.array([len(self._values[n]) for n in names], dtype=np.int64)
        self._index = {step.unit.name: i for i, step in enumerate(self.steps)}
        # per step: the (action, index) pairs whose value removes the unit (read on every step
        # of every episode, so asked of the handlers once)
        self._removers = [
            {
                (name, j)
                for name, values in step.options.items()
                for j, value in enumerate(values)
                if _removes(name, value)
            }
            for step in self.steps
        ]

    def _step(self, unit: Unit) -> Step | None:
        options = {
            name: self._values[name]
            for name in self.action_names
            if unit.allows(name) and len(self._values[name]) > 1
        }
        return Step(unit, options) if options else None

    def __len__(self) -> int:
        return len(self.steps)

    def values(self, action: str) -> tuple[Any, ...]:
        """Every value ``action`` can take in this space, identity first."""
        return self._values[action]

    # ---------------------------------------------------------------- per step
    def mask(self, step: int) -> np.ndarray:
        """Flat bool mask over ``sum(nvec)`` entries: which indices ``step`` really offers."""
        out = np.zeros(int(self.nvec.sum()), dtype=bool)
        offset = 0
        for name, width in zip(self.action_names, self.nvec, strict=True):
            allowed = len(self.steps[step].options.get(name, ()))
            out[offset : offset + max(allowed, 1)] = True  # identity is always legal
            offset += int(width)
        return out

    def legalize(self, step: int, choice: Sequence[int] | np.ndarray) -> np.ndarray:
        """The nearest legal choice: masked actions -> identity, too-large indices -> last."""
        choice = np.asarray(choice, dtype=np.int64).reshape(-1)
        if choice.shape != self.nvec.shape:
            raise ValueError(f"a choice has {len(self.nvec)} entries, got {choice.shape[0]}")
        out = np.zeros_like(self.nvec)
        for i, name in enumerate(self.action_names):
            allowed = len(self.steps[step].options.get(name, ()))
            out[i] = min(max(int(choice[i]), 0), allowed - 1) if allowed else 0
        return out

    def value(self, step: int, action: str, index: int) -> Any:
        """The JSON value of ``index`` for ``action`` at ``step`` (after legalising)."""
        options = self.steps[step].options.get(action)
        if not options:
            return get_action(action).identity
        return options[min(max(int(index), 0), len(options) - 1)]

    def inside_skipped(self, step: int, skipped: set[str]) -> bool:
        """Whether ``step``'s unit lies inside one of the ``skipped`` (removed) units."""
        name = self.steps[step].unit.name
        return any(name.startswith(block + ".") for block in skipped)

    def remover(self, step: int, choice: Sequence[int] | np.ndarray) -> str | None:
        """The action of a legal ``choice`` at ``step`` that removes the unit (``skip``), if
        any: the unit's other actions and its inner steps then do not apply."""
        removers = self._removers[step]
        if removers:
            for name, idx in zip(self.action_names, choice, strict=True):
                if (name, int(idx)) in removers:
                    return name
        return None

    # ---------------------------------------------------------------- whole strategies
    def to_strategy(self, choices: Sequence[Sequence[int] | np.ndarray]) -> Strategy:
        """The strategy of one choice per step (legalised; units in skipped blocks dropped).

        Equal models give equal strategies, so the cache never measures one model twice under
        two spellings: a unit an action removes keeps only that action, and its inner units are
        dropped. One rule spans units: the actions a used action ``excludes`` are dropped
        model-wide (a strategy that gates any block dynamically runs fp32 everywhere: its ONNX
        comes from the dynamo exporter, whose node names the per-unit precision mapping cannot
        read yet).
        """
        if len(choices) != len(self.steps):
            raise ValueError(f"need one choice per step ({len(self.steps)}), got {len(choices)}")
        units: dict[str, dict[str, Any]] = {}
        skipped: set[str] = set()
        for i, raw in enumerate(choices):
            if self.inside_skipped(i, skipped):
                continue
            legal = self.legalize(i, raw)
            acts = {}
            for name, idx in zip(self.action_names, legal, strict=True):
                if idx:
                    acts[name] = self.value(i, name, int(idx))
            remover = self.remover(i, legal)
            if remover is not None:
                skipped.add(self.steps[i].unit.name)
                acts = {remover: acts[remover]}
            if acts:
                units[self.steps[i].unit.name] = acts
        excluded = {
            other for acts in units.values() for name in acts for other in ACTIONS[name].excludes
        }
        if excluded:
            units = {
                name: rest
                for name, acts in units.items()
                if (rest := {a: v for a, v in acts.items() if a not in excluded})
            }
        return Strategy(units)

    def from_strategy(self, strategy: Strategy) -> list[np.ndarray]:
        """The choice indices of ``strategy`` (``"*"`` defaults expanded; unknown values fail)."""
        defaults = dict(strategy.units.get("*", {}))
        out = []
        for step in self.steps:
            acts = {**defaults, **strategy.units.get(step.unit.name, {})}
            choice = np.zeros_like(self.nvec)
            for i, name in enumerate(self.action_names):
                if name in acts and name in step.options:
                    try:
                        choice[i] = step.options[name].index(acts[name])
                    except ValueError:
                        raise ValueError(
                            f"unit {step.unit.name!r}: {name}={acts[name]!r} is not one of "
                            f"the searched values {list(step.options[name])}"
                        ) from None
            out.append(choice)
        return out

    def sample(self, rng: np.random.Generator) -> list[np.ndarray]:
        """Uniformly random legal choices for every step."""
        return [
            np.array(
                [rng.integers(len(step.options.get(name, (0,)))) for name in self.action_names],
                dtype=np.int64,
            )
            for step in self.steps
        ]

    def identity(self) -> list[np.ndarray]:
        return [np.zeros_like(self.nvec) for _ in self.steps]

    # ---------------------------------------------------------------- flat view (TPE, random)
    def parameters(self) -> dict[str, tuple[Any, ...]]:
        """One categorical per (step, action) with a real choice: ``"unit:action"`` -> values."""
        return {
            f"{step.unit.name}:{name}": values
            for step in self.steps
            for name, values in step.options.items()
        }

    def to_parameters(self, strategy: Strategy) -> dict[str, Any]:
        """Inverse of `from_parameters`: every parameter's value in ``strategy``."""
        choices = self.from_strategy(strategy)
        return {
            f"{step.unit.name}:{name}": values[int(choice[self.action_names.index(name)])]
            for step, choice in zip(self.steps, choices, strict=True)
            for name, values in step.options.items()
        }

    def from_parameters(self, params: Mapping[str, Any]) -> Strategy:
        """The strategy of a flat ``{"unit:action": value}`` assignment (missing = identity)."""
        choices = self.identity()
        for key, value in params.items():
            unit, _, action = key.rpartition(":")
            if unit not in self._index or action not in self.action_names:
                raise KeyError(f"{key!r} is not a parameter of this search space")
            step = self._index[unit]
            choices[step][self.action_names.index(action)] = (
                self.steps[step].options[action].index(value)
            )
        return self.to_strategy(choices)


def _removes(name: str, value: Any) -> bool:
    handler = get_action(name)
    return handler.removes_unit(handler.parse(value))
