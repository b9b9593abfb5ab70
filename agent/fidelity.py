"""Multi-fidelity search: at which recovery level each candidate is measured, and what its cheap
measurements say about the model users deploy.

A *fidelity* is a recovery preset (`runners.recovery.RECOVERY_PRESETS`): ``none`` (BatchNorm
re-estimation, seconds), ``short`` (a 40-step distillation fine-tune), ``full`` (400 steps, what
``layerpilot export`` ships). A `Schedule` lists the levels cheapest first; its last level is
the deployed one. The driver (`agent.search`) uses three rules from here, all agent-agnostic:

- **Calibration** (`Calibration`): accuracy after a cheap recovery is not accuracy after full
  recovery (``benchmarks/results/fidelity.md``: a candidate at 47 % without fine-tuning can
  end at 99 %). For each cheap level, ``log1p(drop_deployed) ≈ a + b · log1p(drop_cheap)`` is
  fitted by ridge regression, shrunk towards a measured prior (`PRIORS`), on every strategy
  measured at both;
  it turns a cheap drop into an *estimated* deployed drop, labelled as such on the record.
- **Promotion** (`promotions`): successive halving, asynchronous (ASHA, Li et al., MLSys 2020):
  of the ``n`` candidates measured at a level, the best ``n // eta`` are measured at the next
  level, as soon as they rank there. They are ranked by their *optimistic* deployed reward: the
  drop one residual standard deviation below the fit (optimism under uncertainty, as in UCB).
  Without fine-tuning the outcome is bimodal — a 60-point drop ends at 0 or at 20 after full
  recovery (``fidelity.md``) — so the mean estimate (~2 points) would rank every aggressive
  candidate below a mild one and never learn otherwise: only promoted candidates teach the fit.
  With optimism the cheapest level mostly ranks by speed and ``short``, which predicts the
  deployed drop well (smaller spread), does the sorting. The rung below the deployed level
  ranks for the accuracy bound (the fastest that may hold within it first).
- **Confirmation** (`to_confirm`): when proposals stop, the estimated front's fastest candidates
  within the accuracy bound that have no deployed measurement yet are measured at the last
  level, so the best and the front the search reports are measurements, not estimates.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from agent.records import CandidateRecord
from envs.reward import RewardConfig, Score, reward

if TYPE_CHECKING:
    from search_spaces import Strategy

PRIORS: dict[str, tuple[float, float]] = {"none": (-0.4, 0.35), "short": (-0.5, 0.8)}
"""The ``(a, b)`` each level's fit starts from, before the search has its own pairs: least
squares of ``log1p(full drop)`` on ``log1p(drop)`` over the 18 strategies of
``benchmarks/results/fidelity.md`` (12 on digits-resnet, 6 on mnist1d-cnn; digits none
a −0.41 b 0.42, mnist1d none −0.33 / 0.28; short −0.35 / 0.78 and −0.63 / 0.79). Without
fine-tuning a 50-point drop is estimated at about 1.7 points after full recovery: the cheapest
level mostly measures speed, and its accuracy only rules out what is hopeless. Other levels
start from the identity."""
PRIOR_WEIGHT = 1.0
"""Pseudo-pairs of the prior in each fit: after a handful of the search's own pairs the data
decide."""
PRIOR_SIGMA: dict[str, float] = {"none": 1.15, "short": 0.65}
"""Residual standard deviation of each prior fit in ``log1p`` points (the same 18 strategies:
none 1.17, short 0.65). Other levels start from 0.5."""
SIGMA_PRIOR_WEIGHT = 3.0
"""Pseudo-residuals of the prior spread: two lucky pairs do not make the search certain."""
OPTIMISM = 1.0
"""Standard deviations below the fitted drop that promotion ranks by."""


@dataclass(frozen=True)
class Schedule:
    """The fidelity levels a candidate climbs, cheapest first, and the promotion rate."""

    levels: tuple[str, ...]
    eta: int = 4

    def __post_init__(self) -> None:
        if not self.levels or len(set(self.levels)) != len(self.levels):
            raise ValueError(f"a schedule needs distinct levels, got {self.levels}")
        if self.eta < 2:
            raise ValueError(f"eta must be >= 2, got {self.eta}")

    @property
    def first(self) -> str:
        return self.levels[0]

    @property
    def top(self) -> str:
        """The deployed level."""
        return self.levels[-1]

    def rung(self, fidelity: str) -> int:
        """The level's position (-1 for a level not in the schedule)."""
        return self.levels.index(fidelity) if fidelity in self.levels else -1

    def above(self, fidelity: str) -> str | None:
        """The next level up (None at the top or off the schedule)."""
        rung = self.rung(fidelity)
        return self.levels[rung + 1] if 0 <= rung < len(self.levels) - 1 else None


def _x(drop: float) -> float:
    return math.log1p(max(drop, 0.0))


@dataclass(frozen=True)
class Calibration:
    """Per cheap level, ``(a, b, pairs)`` of ``log1p(deployed drop) ≈ a + b · log1p(drop)``."""

    schedule: Schedule
    fits: dict[str, tuple[float, float, int]]
    sigmas: dict[str, float] = field(default_factory=dict)
    """Per cheap level, the spread of ``log1p(deployed drop)`` around the fit."""

    @classmethod
    def fit(cls, schedule: Schedule, records: Iterable[CandidateRecord]) -> Calibration:
        """Fit each cheap level on the strategies measured both there and at the top level."""
        drops = measured_drops(records)
        fits: dict[str, tuple[float, float, int]] = {}
        sigmas: dict[str, float] = {}
        for level in schedule.levels[:-1]:
            pairs = [
                (_x(by[level]), _x(by[schedule.top]))
                for by in drops.values()
                if level in by and schedule.top in by
            ]
            fits[level] = a, b, _ = _ridge(pairs, PRIORS.get(level, (0.0, 1.0)))
            residuals = sum((y - a - b * x) ** 2 for x, y in pairs)
            prior = PRIOR_SIGMA.get(level, 0.5) ** 2 * SIGMA_PRIOR_WEIGHT
            sigmas[level] = math.sqrt((prior + residuals) / (SIGMA_PRIOR_WEIGHT + len(pairs)))
        return cls(schedule, fits, sigmas)

    def pairs(self, fidelity: str) -> int:
        """Strategies the level's fit was made on (0 at the top level)."""
        return self.fits.get(fidelity, (0.0, 1.0, 0))[2]

    def deployed_drop(self, fidelity: str, drop: float) -> float:
        """The estimated deployed drop of a candidate that dropped ``drop`` at ``fidelity`` (the
        drop itself at the top level or when not finite)."""
        if fidelity == self.schedule.top or fidelity not in self.fits or not math.isfinite(drop):
            return drop
        a, b, _ = self.fits[fidelity]
        return math.expm1(a + b * _x(drop))

    def optimistic_drop(self, fidelity: str, drop: float) -> float:
        """The deployed drop ``OPTIMISM`` standard deviations below the estimate (the drop
        itself at the top level)."""
        if fidelity == self.schedule.top or fidelity not in self.fits or not math.isfinite(drop):
            return drop
        a, b, _ = self.fits[fidelity]
        return math.expm1(a + b * _x(drop) - OPTIMISM * self.sigmas.get(fidelity, 0.0))


def _ridge(
    pairs: Sequence[tuple[float, float]], prior: tuple[float, float]
) -> tuple[float, float, int]:
    """``(a, b, n)`` minimising ``Σ (y − a − b x)² + w ((a − a0)² + (b − b0)²)``, with
    ``b >= 0`` (a cheap level that ranks backwards is no information, not inverted
    information)."""
    n = len(pairs)
    if n == 0:
        return prior[0], prior[1], 0
    x = np.array([p[0] for p in pairs])
    y = np.array([p[1] for p in pairs])
    design = np.stack([np.ones(n), x], axis=1)
    gram = design.T @ design + PRIOR_WEIGHT * np.eye(2)
    a, b = np.linalg.solve(gram, design.T @ y + PRIOR_WEIGHT * np.array(prior))
    if b < 0:  # refit the intercept alone with b = 0
        a, b = float(np.sum(y) / (n + PRIOR_WEIGHT)), 0.0
    return float(a), float(b), n


def measured_drops(records: Iterable[CandidateRecord]) -> dict[str, dict[str, float]]:
    """``{strategy key: {fidelity: measured drop}}`` over the successful records."""
    out: dict[str, dict[str, float]] = {}
    for record in records:
        if record.ok and math.isfinite(record.accuracy_drop):
            out.setdefault(record.strategy.key(), {})[record.fidelity] = record.accuracy_drop
    return out


def estimate(
    record: CandidateRecord, calibration: Calibration, config: RewardConfig
) -> tuple[float, float, bool]:
    """``(deployed drop, reward, estimated)`` of ``record`` under ``calibration``."""
    if not record.ok or record.result is None:
        return math.nan, reward(None, config), False
    top = record.fidelity == calibration.schedule.top
    drop = calibration.deployed_drop(record.fidelity, record.accuracy_drop)
    score = Score(
        accuracy_drop=drop,
        speedup=record.result.speedup,
        ideal_speedup=record.result.ideal_speedup,
        predicted=not top,
    )
    return drop, reward(score, config), not top


def _optimistic_reward(
    record: CandidateRecord, calibration: Calibration, config: RewardConfig
) -> float:
    """The reward at `Calibration.optimistic_drop` (promotion's ranking)."""
    assert record.result is not None
    score = Score(
        accuracy_drop=calibration.optimistic_drop(record.fidelity, record.accuracy_drop),
        speedup=record.result.speedup,
        ideal_speedup=record.result.ideal_speedup,
        predicted=True,
    )
    return reward(score, config)


def promotions(
    records: Sequence[CandidateRecord],
    schedule: Schedule,
    config: RewardConfig,
    busy: set[tuple[str, str]],
    bound: float | None = None,
) -> list[tuple[Strategy, str]]:
    """The ``(strategy, next level)`` pairs ASHA promotes now, most urgent first.

    At each level below the top, the successful candidates measured there are ranked by their
    optimistic deployed reward (calibrated on ``records``); the best ``n // eta`` of the ``n`` are
    due at the next level unless already measured or in flight there (``busy`` holds the
    ``(strategy key, level)`` pairs in flight). Higher levels come first: a candidate near the
    deployed level is worth finishing before a new one is started.

    With a ``bound`` (accuracy points), the rung that feeds the deployed level ranks for the
    user's goal instead, as `to_confirm` does: candidates faster than the baseline whose
    optimistic deployed drop is within the bound come first, fastest first, then the rest by
    optimistic reward. A reward with a mild speed weight otherwise spends the expensive level on
    safe 4x candidates while a 12x one that may hold up waits below it.
    """
    calibration = Calibration.fit(schedule, records)
    measured = {(r.strategy.key(), r.fidelity) for r in records}
    due: list[tuple[Strategy, str]] = []
    for level in reversed(schedule.levels[:-1]):
        nxt = schedule.above(level)
        assert nxt is not None
        goal = bound is not None and nxt == schedule.top
        rung: dict[str, tuple[tuple[int, float], CandidateRecord]] = {}
        for record in records:
            if record.fidelity == level and record.ok and record.result is not None:
                score = _optimistic_reward(record, calibration, config)
                rank = (1, -score)
                if goal and record.speedup > 1.0:
                    assert bound is not None
                    optimistic = calibration.optimistic_drop(level, record.accuracy_drop)
                    if optimistic <= bound:
                        rank = (0, -record.speedup)
                rung[record.strategy.key()] = (rank, record)
        quota = len(rung) // schedule.eta
        ranked = sorted(rung.values(), key=lambda item: (item[0], item[1].index))[:quota]
        for _, record in ranked:
            key = record.strategy.key()
            if (key, nxt) not in measured and (key, nxt) not in busy:
                due.append((record.strategy, nxt))
    return due


def best_known(
    records: Sequence[CandidateRecord], schedule: Schedule
) -> dict[str, CandidateRecord]:
    """Per strategy, its record at the highest level it was measured at (successful only)."""
    best: dict[str, CandidateRecord] = {}
    for record in records:
        if not record.ok:
            continue
        key = record.strategy.key()
        held = best.get(key)
        if held is None or schedule.rung(record.fidelity) > schedule.rung(held.fidelity):
            best[key] = record
    return best


def to_confirm(
    records: Sequence[CandidateRecord],
    schedule: Schedule,
    config: RewardConfig,
    bound: float,
    busy: set[tuple[str, str]],
) -> list[Strategy]:
    """Strategies to measure at the top level before the search ends, most useful first.

    From every strategy's best-known record (a measurement at the top level, else its
    calibrated estimate) the front of (estimated deployed drop, speedup) is taken; its members
    within ``bound`` points that are neither measured nor in flight at the top come fastest
    first, then the best-reward estimate if it is not among them. A confirmation that falls
    outside the bound drops out of the front, so calling again after it lands gives the next.
    """
    calibration = Calibration.fit(schedule, records)
    points: list[tuple[float, float, float, CandidateRecord]] = []
    for record in best_known(records, schedule).values():
        drop, score, _ = estimate(record, calibration, config)
        if math.isfinite(drop) and math.isfinite(record.speedup):
            points.append((drop, record.speedup, score, record))
    front = [
        p
        for p in points
        if not any(q[0] <= p[0] and q[1] >= p[1] and (q[0], q[1]) != (p[0], p[1]) for q in points)
    ]
    top = schedule.top
    open_ = [p for p in front if p[3].fidelity != top and (p[3].strategy.key(), top) not in busy]
    # a candidate slower than the baseline is never worth deploying, however accurate
    chosen = sorted((p for p in open_ if p[0] <= bound and p[1] > 1.0), key=lambda p: -p[1])
    best = max(points, key=lambda p: p[2], default=None)
    if (
        best is not None
        and best[1] > 1.0
        and best[3].fidelity != top
        and best not in chosen
        and (best[3].strategy.key(), top) not in busy
    ):
        chosen.append(best)
    return [p[3].strategy for p in chosen]


__all__ = [
    "OPTIMISM",
    "PRIORS",
    "PRIOR_SIGMA",
    "Calibration",
    "Schedule",
    "best_known",
    "estimate",
    "measured_drops",
    "promotions",
    "to_confirm",
]
