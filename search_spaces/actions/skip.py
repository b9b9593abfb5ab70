"""``skip``: remove a residual block or transformer layer; its input passes through."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from search_spaces.actions.base import ActionHandler, BuildContext
from search_spaces.canonical import replace_module
from search_spaces.errors import InvalidActionValueError
from search_spaces.units import Unit


def block_reason(unit: Unit) -> str | None:
    """Why ``unit`` is not a block that can be removed (``None``: it can); ``dynamic_skip``
    gates the same blocks."""
    if unit.kind != "block":
        return f"a {unit.kind} layer, not a residual block"
    return unit.skip_reason


class Skipped(nn.Module):
    """Identity that accepts (and ignores) the extra arguments a block's caller may pass.

    A block that returned a tuple (a Hugging Face layer: hidden state, then attention weights
    or a cache) gets a tuple of the same length back, the input first and ``None`` after.
    """

    def __init__(self, items: int = 0) -> None:
        super().__init__()
        self.items = items

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if self.items:
            return (x, *([None] * (self.items - 1)))
        return x


@dataclass(frozen=True)
class SkipConfig:
    """Whether the block is removed."""

    skip: bool
    """``True`` removes the block for every input."""

    def __post_init__(self) -> None:
        if not isinstance(self.skip, bool):
            raise InvalidActionValueError(f"skip must be true or false, got {self.skip!r}")


class SkipHandler(ActionHandler):
    summary = "remove a residual block for every input"
    name = "skip"
    order = 30
    choices = (False, True)
    identity = False

    def parse(self, value: Any) -> SkipConfig:
        return SkipConfig(value)

    def removes_unit(self, config: SkipConfig) -> bool:
        return config.skip

    def flops_saving(self, value: Any) -> float:
        return 1.0 if self.parse(value).skip else 0.0

    def surrogate_terms(self, shares: Mapping[str, float]) -> tuple[float, ...]:
        # losses compound with the amount removed: pruned layers in the blocks that remain
        return (shares[self.name], shares.get("prune", 0.0) * shares[self.name])

    def why_not(self, unit: Unit) -> str | None:
        return block_reason(unit)

    def apply(self, ctx: BuildContext, unit: Unit, config: SkipConfig) -> None:
        replace_module(ctx.model, unit.name, Skipped(unit.output_items))
        ctx.invalidate_graph()
