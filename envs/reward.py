"""The speed–accuracy reward: one module, one function, every mode documented here.

All modes read the same two measured quantities of a candidate: its accuracy drop ``d`` in
points (baseline accuracy − candidate accuracy, on held-out data) and its measured speedup
``s = baseline latency / candidate latency`` on the deployment runtime.

``tradeoff`` (default): ``R = −d + λ · log2(s)``.
    λ reads as *accuracy points I would give up for each doubling of speed*: with λ = 0.5 a 2x
    faster model is worth half a point, so the optimum sits around the 1-point-drop region; a
    small λ asks for near-lossless models, a large λ for aggressive ones. We chose this over
    AMC's ``−error · log(FLOPs)`` product because it is additive and scale-free — the reward of
    a speedup does not depend on how accurate the baseline is — and because it makes λ a knob a
    user can state (and the policy can be conditioned on: one λ per episode traces a front).
``target``: ``R = −d − 10 · min(8, max(0, log2(T / s)))``.
    Reach a target speedup ``T`` and keep as much accuracy as possible. The environment clips
    the remaining units' actions so the *predicted* speedup always reaches ``T`` (AMC's
    resource-constrained trick); the second term only bites when the measurement falls short of
    the prediction, at 10 points per missing doubling.
``max-drop``: ``R = log2(s)`` if ``d ≤ D`` else ``−(d − D)``.
    Be as fast as possible while losing at most ``D`` points; any candidate within the bound
    beats any candidate outside it (log2 s ≥ 0 when it is no slower).
``flops-proxy``: ``tradeoff`` with the FLOP-ideal speedup in place of the measured one.
    **A proxy** for smoke runs and tests only: it ignores what the runtime really does (int8 can
    be slower than fp32 on small layers). Reported figures never come from it.

The reward reads any `Scored` value: a measured ``runners.result.EvalResult``, a surrogate's
prediction or a probe table entry (both `Score`).

Rewards are bounded: the drop counts at most ``MAX_DROP`` points and ``log2(s)`` is clipped to
``[−LOG2_CLIP, LOG2_CLIP]``; a failed candidate gets ``FAILED_REWARD``, below anything a built
candidate can score, so no NaN or inf ever reaches the learner.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

RewardMode = Literal["tradeoff", "target", "max-drop", "flops-proxy"]
REWARD_MODES: tuple[str, ...] = ("tradeoff", "target", "max-drop", "flops-proxy")

MAX_DROP = 100.0
"""Accuracy points: a candidate can lose at most all of them."""
LOG2_CLIP = 8.0
"""Speedups are credited up to 256x (and slowdowns down to 1/256)."""
TARGET_SHORTFALL_WEIGHT = 10.0
"""Points per doubling of speed that a ``target`` candidate falls short of the target."""
FAILED_REWARD = -(MAX_DROP + TARGET_SHORTFALL_WEIGHT * LOG2_CLIP + 1.0)
"""What a candidate that failed to build or run scores: below every built candidate."""


class RewardError(ValueError):
    """An invalid reward configuration."""


@dataclass(frozen=True)
class RewardConfig:
    """Which reward a search maximises (see the module docstring for the formulas)."""

    mode: RewardMode = "tradeoff"
    """``tradeoff``, ``target``, ``max-drop`` or ``flops-proxy``."""
    lam: float = 0.5
    """Trade-off weight λ: accuracy points per doubling of speed (``tradeoff``/``flops-proxy``)."""
    target_speedup: float | None = None
    """Target speedup T (``target`` mode), > 1."""
    max_drop: float = 1.0
    """Accuracy-drop bound D in points (``max-drop`` mode), >= 0."""

    def __post_init__(self) -> None:
        if self.mode not in REWARD_MODES:
            raise RewardError(
                f"unknown reward mode {self.mode!r}; choose one of {', '.join(REWARD_MODES)}"
            )
        if not (math.isfinite(self.lam) and self.lam >= 0):
            raise RewardError(f"lam must be a finite number >= 0, got {self.lam}")
        if self.mode == "target":
            t = self.target_speedup
            if t is None or not (math.isfinite(t) and t > 1.0):
                raise RewardError(f"target mode needs a target speedup > 1, got {t}")
        if not (math.isfinite(self.max_drop) and self.max_drop >= 0):
            raise RewardError(f"max_drop must be a finite number >= 0, got {self.max_drop}")

    def with_lam(self, lam: float) -> RewardConfig:
        return RewardConfig(self.mode, lam, self.target_speedup, self.max_drop)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "lam": self.lam,
            "target_speedup": self.target_speedup,
            "max_drop": self.max_drop,
        }


class Scored(Protocol):
    """What the reward reads of a candidate (an ``EvalResult``, a prediction, a probe)."""

    @property
    def accuracy_drop(self) -> float:
        """Baseline minus candidate accuracy, in points."""
        ...

    @property
    def speedup(self) -> float:
        """Baseline latency over candidate latency on the deployment runtime."""
        ...

    @property
    def ideal_speedup(self) -> float:
        """The FLOP-ideal speedup (``flops-proxy`` mode)."""
        ...


@dataclass(frozen=True)
class Score:
    """The three quantities the reward reads, without the rest of a measurement: a surrogate's
    prediction (``predicted=True``) or a probe table entry."""

    accuracy_drop: float
    """Baseline minus candidate accuracy, in points."""
    speedup: float
    """Baseline latency over candidate latency."""
    ideal_speedup: float
    """The FLOP-ideal speedup."""
    predicted: bool = False
    """A surrogate's estimate, not a measurement (never reported as a result)."""

    @classmethod
    def of(cls, result: Scored, predicted: bool = False) -> Score:
        """The score of ``result`` (e.g. a measured ``EvalResult``)."""
        drop, speedup, ideal = result.accuracy_drop, result.speedup, result.ideal_speedup
        return cls(float(drop), float(speedup), float(ideal), predicted)

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy_drop": self.accuracy_drop,
            "speedup": self.speedup,
            "ideal_speedup": self.ideal_speedup,
            "predicted": self.predicted,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Score:
        """The inverse of `to_dict`; also reads a result's ``to_dict()`` (other keys ignored,
        a missing value is NaN), which is what probe tables held before they held scores."""

        def number(key: str) -> float:
            try:
                return float(data.get(key, math.nan))
            except (TypeError, ValueError):
                return math.nan

        return cls(
            number("accuracy_drop"),
            number("speedup"),
            number("ideal_speedup"),
            bool(data.get("predicted", False)),
        )


def _finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def reward(result: Scored | None, config: RewardConfig) -> float:
    """The reward of one evaluated candidate.

    Args:
        result: What the candidate scored (`Scored`: an ``EvalResult``, or a `Score`), or
            ``None`` for a failed candidate.
        config: The reward mode and its parameter.

    Returns:
        A finite float; ``FAILED_REWARD`` if the candidate failed or its metrics are not finite.

    Example:
        >>> reward(Score(accuracy_drop=0.5, speedup=4.0, ideal_speedup=4.0), RewardConfig())
        0.5
    """
    if result is None:
        return FAILED_REWARD
    drop = _finite(result.accuracy_drop)
    speedup = _finite(result.ideal_speedup if config.mode == "flops-proxy" else result.speedup)
    if drop is None or speedup is None or speedup <= 0:
        return FAILED_REWARD
    drop = min(drop, MAX_DROP)
    gain = min(max(math.log2(speedup), -LOG2_CLIP), LOG2_CLIP)
    if config.mode in ("tradeoff", "flops-proxy"):
        return -drop + config.lam * gain
    if config.mode == "target":
        assert config.target_speedup is not None
        shortfall = min(max(0.0, math.log2(config.target_speedup) - gain), LOG2_CLIP)
        return -drop - TARGET_SHORTFALL_WEIGHT * shortfall
    return gain if drop <= config.max_drop else -(drop - config.max_drop)
