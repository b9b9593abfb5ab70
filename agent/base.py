"""What every search agent implements, so PPO and the baselines run in one harness.

The driver (`agent.search`) asks an agent for proposals, evaluates them through the executor
(cache first), and tells the agent each outcome as a `CandidateRecord`. While a measurement is
running the driver lets the agent `think` (PPO trains on its surrogate then); baselines have
nothing to think about.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from agent.records import CandidateRecord
from search_spaces.strategy import Strategy


@dataclass(frozen=True)
class Proposal:
    """A strategy an agent wants measured, with the context it was proposed in."""

    strategy: Strategy
    extras: dict[str, Any] = field(default_factory=dict)
    """Recorded with the candidate (e.g. the trade-off weight ``lam`` it was proposed for)."""


class Agent(Protocol):
    """A search agent (ask / tell)."""

    name: str

    def ask(self) -> Proposal | None:
        """The next strategy to measure; ``None`` if the agent has nothing to propose right now
        (it wants to `think` first) or ever again (then `exhausted` is true)."""

    def tell(self, record: CandidateRecord) -> None:
        """The outcome of a proposal (also sent for a proposal that was already measured)."""

    def think(self) -> None:
        """Use idle time (a measurement is in flight). Must return within a few seconds."""

    @property
    def exhausted(self) -> bool:
        """No proposal will ever come again (e.g. the uniform grid is done)."""

    def close(self) -> None:
        """Release what the agent holds (RLlib algorithm, Optuna study)."""
