"""A cheap stand-in for the real evaluator, fitted on the candidates measured so far.

A real candidate costs seconds; an episode on the surrogate costs well under a millisecond, so
the policy can train on thousands of them between real measurements while the real budget goes
to the candidates it proposes. The surrogate predicts the two quantities the reward needs:

- ``log(latency ratio)`` = the cost table's additive sum + a ridge-regression correction,
- ``accuracy drop`` = the cost table's additive sum + a ridge correction, fitted on
  ``log1p(drop)`` (losses compound, a collapse must not dominate the fit, and the prediction
  stays >= 0),

where the corrections are fitted on whole-model measurements with one-hot choice features. With
no measurement yet, it is the cost table alone. Its predictions are marked ``predicted: True``
and are never reported as results.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from envs.cost import CostModel
from envs.reward import Score, Scored
from search_spaces.actions import get_action
from search_spaces.space import DecisionSpace
from search_spaces.strategy import Strategy

N_TABLE = 4
"""Leading dense features before the actions' whole-model terms: intercept, table sums (3)."""
ONEHOT_SHRINK = 5.0
"""How much harder per-unit corrections are shrunk than the dense ones."""


def _squash(drop: float) -> float:
    """Drops are fitted as ``log1p``: a collapse (60 points) must not dominate the fit, and
    predictions stay >= 0 (losing accuracy is the rule; small gains are noise)."""
    return math.log1p(max(drop, 0.0))


def _unsquash(value: float) -> float:
    return math.expm1(max(value, 0.0))


class Surrogate:
    """``surrogate(strategy) -> predicted result`` (the `Evaluator` signature of the env).

    Args:
        space: The decision space the strategies come from.
        cost: The additive per-choice table used as the prior.
        ridge: L2 weight of the corrections (larger trusts the table more).
    """

    def __init__(self, space: DecisionSpace, cost: CostModel, ridge: float = 1.0) -> None:
        self.space = space
        self.cost = cost
        self.ridge = ridge
        self._offsets = np.concatenate([[0], np.cumsum(space.nvec)])
        self._lat_w: np.ndarray | None = None
        self._drop_w: np.ndarray | None = None
        self._failed: set[str] = set()
        self.samples = 0
        self._dense = N_TABLE + len(self._globals(space.identity()))
        """Leading dense features: the table's and the actions' whole-model terms."""

    def features(self, strategy: Strategy) -> tuple[np.ndarray, float, float]:
        """One-hot choice features plus the table's ``(log latency, drop)`` prior."""
        choices = self.space.from_strategy(strategy)
        lat, drop = self.cost.estimate(choices)
        width = int(self._offsets[-1])
        onehot = np.zeros(len(choices) * width, dtype=np.float64)
        for step, choice in enumerate(choices):
            for a, idx in enumerate(choice):
                if idx:
                    onehot[step * width + self._offsets[a] + idx] = 1.0
        extra = np.array([1.0, lat, drop / 10.0, (drop / 10.0) ** 2, *self._globals(choices)])
        return np.concatenate([extra, onehot]), lat, drop

    def _globals(self, choices: list[np.ndarray]) -> list[float]:
        """Whole-model terms the additive table cannot express, each action's own
        (``ActionHandler.surrogate_terms``: int8 pays off only where neighbours are int8 too, so
        the *fraction* of int8 units carries the effect; losses compound with the amount
        removed), from the share of the units offering each action on which it is chosen."""
        names = self.space.action_names
        shares: dict[str, float] = {}
        for a, action in enumerate(names):
            where = [i for i, s in enumerate(self.space.steps) if action in s.options]
            chosen = sum(float(choices[i][a] > 0) for i in where)
            shares[action] = chosen / max(len(where), 1)
        return [term for action in names for term in get_action(action).surrogate_terms(shares)]

    def fit(self, data: Sequence[tuple[Strategy, Scored | None]]) -> None:
        """Refit the corrections on measured ``(strategy, result or None if failed)`` pairs."""
        rows, y_lat, y_drop = [], [], []
        for strategy, result in data:
            if result is None:
                self._failed.add(strategy.key())
                continue
            x, lat, drop = self.features(strategy)
            speedup = float(result.speedup)
            acc_drop = float(result.accuracy_drop)
            if not (math.isfinite(speedup) and speedup > 0 and math.isfinite(acc_drop)):
                continue
            rows.append(x)
            y_lat.append(-math.log(speedup) - lat)
            y_drop.append(_squash(acc_drop) - _squash(drop))
        self.samples = len(rows)
        if len(rows) < 3:
            return
        x = np.stack(rows)
        # the table's sums and the whole-model shares explain most of it; per-unit one-hots
        # only correct what they cannot, so they are shrunk harder
        weights = np.full(x.shape[1], self.ridge * ONEHOT_SHRINK)
        weights[: self._dense] = self.ridge
        weights[0] = 1e-6  # do not shrink the intercept
        gram = x.T @ x + np.diag(weights)
        self._lat_w = np.linalg.solve(gram, x.T @ np.asarray(y_lat))
        self._drop_w = np.linalg.solve(gram, x.T @ np.asarray(y_drop))

    def predict(self, strategy: Strategy) -> tuple[float, float]:
        """``(log latency ratio, accuracy drop)`` predicted for ``strategy``."""
        x, lat, drop = self.features(strategy)
        squashed = _squash(drop)
        if self._lat_w is not None and self._drop_w is not None:
            lat += float(x @ self._lat_w)
            squashed += float(x @ self._drop_w)
        return lat, min(_unsquash(squashed), 100.0)

    def __call__(self, strategy: Strategy) -> Score | None:
        if strategy.key() in self._failed:
            return None
        lat, drop = self.predict(strategy)
        speedup = math.exp(-max(min(lat, 5.0), -5.0))
        return Score(accuracy_drop=drop, speedup=speedup, ideal_speedup=speedup, predicted=True)
