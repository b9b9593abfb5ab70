"""What an action is: a validated config, one handler, one registration.

Adding an action type means writing one module with a frozen config dataclass (validated in
``__post_init__``, built from the strategy's JSON value) and one :class:`ActionHandler`, then
``register(...)``-ing it in ``search_spaces/actions/__init__.py``. Resolution, the CLI's profile
table and the agents' action spaces read the registry, so they pick it up.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from search_spaces.units import Unit


@dataclass
class BuildContext:
    """State shared by the transforms while one candidate is built (a live object)."""

    model: nn.Module
    """The model being transformed in place (a private copy)."""
    example_input: torch.Tensor
    """Batch-1 input for tracing."""
    precisions: dict[str, str] = field(default_factory=dict)
    """Module path -> non-fp32 precision, collected by the quantize action for the runtime."""
    gated: list[tuple[str, nn.Module, float]] = field(default_factory=list)
    """(module path, block, price α) of each block the dynamic-skip action gates, in order."""
    _graph: Any = None

    def dependency_graph(self) -> Any:
        """torch-pruning's DependencyGraph of the current model (rebuilt after invalidation)."""
        if self._graph is None:
            import torch_pruning as tp

            self._graph = tp.DependencyGraph().build_dependency(
                self.model, example_inputs=self.example_input, verbose=False
            )
        return self._graph

    def invalidate_graph(self) -> None:
        """Call after changing structure outside torch-pruning (heads, replacements)."""
        self._graph = None


class ActionHandler(ABC):
    """Applies one kind of action to one unit of a model."""

    name: ClassVar[str]
    """Key in the strategy JSON (``"prune"``)."""
    order: ClassVar[int]
    """Application order: lower first (prune on the full graph before skip removes blocks)."""
    choices: ClassVar[tuple[Any, ...]]
    """JSON values offered to search agents, the identity first."""
    identity: ClassVar[Any]
    """The JSON value that means "leave the unit as it is"."""
    searched_by_default: ClassVar[bool] = True
    """Whether a search offers this action when the user does not list the actions."""

    @abstractmethod
    def parse(self, value: Any) -> Any:
        """The validated config for a JSON value; raises ``InvalidActionValueError``."""

    @abstractmethod
    def why_not(self, unit: Unit) -> str | None:
        """``None`` if this action may be set on ``unit``, else the reason it is masked."""

    @abstractmethod
    def apply(self, ctx: BuildContext, unit: Unit, config: Any) -> None:
        """Transform ``ctx.model`` in place for ``unit``."""

    def finalize(self, ctx: BuildContext) -> None:  # noqa: B027 - optional hook
        """Called once after :meth:`apply` ran on every unit (whole-model wrapping)."""

    def is_identity(self, config: Any) -> bool:
        """Whether ``config`` leaves the unit unchanged."""
        return config == self.parse(self.identity)
