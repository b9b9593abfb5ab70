"""`CandidateRecord`: one evaluated candidate of a search, as tracked, saved and reported."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from envs.reward import Score
from runners.job import Outcome
from runners.result import EvalResult
from search_spaces import Strategy


@dataclass(frozen=True)
class CandidateRecord:
    """An outcome plus what the search made of it."""

    index: int
    """0-based position in the search's evaluation order."""
    outcome: Outcome
    reward: float
    """The search's reward for it (finite; failures get the bounded penalty)."""
    source: str
    """Who proposed it: the agent's name (``ppo``, ``random``, ``uniform``, ``tpe``)."""
    cached: bool = False
    """Measured by an earlier search (a cache hit), not in this one."""
    extras: dict[str, Any] = field(default_factory=dict)
    """Agent-specific context, e.g. the trade-off weight ``lam`` the policy was asked for."""
    deployed_drop: float | None = None
    """The accuracy drop of the model users deploy (the search's last fidelity, what
    ``layerpilot export`` ships): measured when this record is at that fidelity, otherwise the
    estimate `agent.fidelity.Calibration` made of it when the record landed (``estimated``).
    None (the default): this record's own drop, a measurement at the deployed fidelity (a
    single-fidelity search, or a record from before fidelities)."""
    estimated: bool = False
    """``deployed_drop`` (and so ``reward``) is an estimate from a cheaper fidelity, not a
    measurement of the deployed model."""
    optimistic_drop: float | None = None
    """For an estimate: the deployed drop one calibration deviation below it
    (`agent.fidelity.Calibration.optimistic_drop`), what promotion ranks by and what the RL
    agent learns from (optimism under uncertainty: the cheap level cannot tell which aggressive
    candidates recover). None: ``deployed_drop``."""

    def __post_init__(self) -> None:
        if not math.isfinite(self.reward):
            raise ValueError(f"candidate {self.index}: reward must be finite, got {self.reward}")
        if self.deployed_drop is None:
            object.__setattr__(self, "deployed_drop", self.accuracy_drop)

    @property
    def fidelity(self) -> str:
        """The recovery level it was measured at (``none``, ``short``, ``full``)."""
        return self.outcome.fidelity

    @property
    def deployed(self) -> Score | None:
        """What the deployed model scores, as far as this record knows: ``deployed_drop`` with
        the measured speed (latency does not depend on the recovery); None when it failed."""
        result = self.outcome.result
        if result is None or self.deployed_drop is None:
            return None
        return Score(
            accuracy_drop=self.deployed_drop,
            speedup=result.speedup,
            ideal_speedup=result.ideal_speedup,
            predicted=self.estimated,
        )

    @property
    def optimistic(self) -> Score | None:
        """`deployed` at ``optimistic_drop`` (the same when there is none)."""
        deployed = self.deployed
        if deployed is None or self.optimistic_drop is None:
            return deployed
        return replace(deployed, accuracy_drop=self.optimistic_drop)

    @property
    def strategy(self) -> Strategy:
        return self.outcome.strategy

    @property
    def ok(self) -> bool:
        return self.outcome.ok

    @property
    def result(self) -> EvalResult | None:
        """The measured result (None when the candidate failed)."""
        return self.outcome.result

    @property
    def accuracy(self) -> float:
        """The candidate's accuracy in points (NaN when it failed)."""
        return math.nan if self.outcome.result is None else self.outcome.result.accuracy

    @property
    def accuracy_drop(self) -> float:
        """Baseline minus candidate accuracy in points (NaN when it failed)."""
        return math.nan if self.outcome.result is None else self.outcome.result.accuracy_drop

    @property
    def speedup(self) -> float:
        """The measured (or, latency-free, FLOP-ideal) speedup (NaN when it failed)."""
        return math.nan if self.outcome.result is None else self.outcome.result.speedup

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "reward": self.reward,
            "source": self.source,
            "cached": self.cached,
            "extras": self.extras,
            "deployed_drop": _finite_or_none(self.deployed_drop),
            "estimated": self.estimated,
            "optimistic_drop": _finite_or_none(self.optimistic_drop),
            "outcome": self.outcome.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CandidateRecord:
        return cls(
            index=int(data["index"]),
            outcome=Outcome.from_dict(data["outcome"]),
            reward=float(data["reward"]),
            source=data["source"],
            cached=bool(data.get("cached", False)),
            extras=dict(data.get("extras", {})),
            deployed_drop=_float_or_none(data.get("deployed_drop")),
            estimated=bool(data.get("estimated", False)),
            optimistic_drop=_float_or_none(data.get("optimistic_drop")),
        )


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)
