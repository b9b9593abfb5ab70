"""``prune``: structured pruning that physically removes channels, FFN width or heads.

Value: the fraction of channels (heads, for attention units) to remove, ``0 <= ratio <= 0.95``.
Conv/linear groups go through torch-pruning (coupled layers are cut together, ranked by the
group's L2 magnitude); attention units drop their lowest-magnitude heads across Q/K/V and the
output projection (`search_spaces.heads`, ours and Hugging Face's layouts alike).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from search_spaces.actions.base import ActionHandler, BuildContext
from search_spaces.errors import InvalidActionValueError, TransformError
from search_spaces.heads import head_layout, prune_heads
from search_spaces.units import Unit

MAX_RATIO = 0.95


@dataclass(frozen=True)
class PruneConfig:
    """How much of a unit's width to remove."""

    ratio: float
    """Fraction of output channels (or heads) removed; 0 keeps the unit as it is."""

    def __post_init__(self) -> None:
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, int | float):
            raise InvalidActionValueError(f"prune ratio must be a number, got {self.ratio!r}")
        if not math.isfinite(self.ratio) or not 0.0 <= self.ratio <= MAX_RATIO:
            raise InvalidActionValueError(
                f"prune ratio must be in [0, {MAX_RATIO}], got {self.ratio}"
            )


def kept_channels(channels: int, ratio: float) -> int:
    """Channels kept after removing ``ratio`` of ``channels``.

    Rounded to a multiple of 8 for layers of 32+ channels (ONNX Runtime's CPU convolution
    kernels work on blocks of 8 channels; odd widths waste the remainder), never below 1.
    """
    keep = channels * (1.0 - ratio)
    step = 8 if channels >= 32 else 1
    return max(step if channels >= step else 1, min(channels, round(keep / step) * step))


class PruneHandler(ActionHandler):
    summary = "structured pruning of channels, FFN width or heads"
    name = "prune"
    order = 10
    choices = (0.0, 0.25, 0.5, 0.75, 0.875)
    identity = 0.0

    def parse(self, value: Any) -> PruneConfig:
        return PruneConfig(value)

    def flops_saving(self, value: Any) -> float:
        # ~r of the unit's FLOPs (and of the next layer's input, not counted here)
        return float(self.parse(value).ratio)

    def surrogate_terms(self, shares: Mapping[str, float]) -> tuple[float, ...]:
        return (shares[self.name],)

    def why_not(self, unit: Unit) -> str | None:
        if unit.kind == "block":
            return "a block: prune its layers or attention heads"
        if unit.coupled_to is not None:
            return (
                f"its channels are coupled (residual add / shared channels) to unit "
                f"{unit.coupled_to!r}; set prune there"
            )
        return unit.prune_reason

    def apply(self, ctx: BuildContext, unit: Unit, config: PruneConfig) -> None:
        if unit.kind == "attention":
            layout = head_layout(ctx.model, unit.name)
            if layout is None:
                raise TransformError(f"prune: unit {unit.name!r} has no attention heads to cut")
            prune_heads(ctx.model, layout, config.ratio)
            ctx.invalidate_graph()
            return
        prune_channels(ctx, unit.name, config.ratio)


def prune_channels(ctx: BuildContext, name: str, ratio: float) -> None:
    """Remove ``ratio`` of the output channels of ``name``'s group, lowest L2 magnitude first."""
    import torch_pruning as tp

    graph = ctx.dependency_graph()
    module = ctx.model.get_submodule(name)
    if isinstance(module, nn.Linear):
        fn, channels = tp.prune_linear_out_channels, module.out_features
    elif isinstance(module, nn.Conv1d | nn.Conv2d):
        fn, channels = tp.prune_conv_out_channels, module.out_channels
    else:
        raise TransformError(f"prune: unit {name!r} is a {type(module).__name__}, not a layer")
    n_remove = channels - kept_channels(channels, ratio)
    if n_remove <= 0:
        return
    group = graph.get_pruning_group(module, fn, idxs=list(range(channels)))
    importance = tp.importance.GroupMagnitudeImportance(p=2)(group)
    if importance is None:
        raise TransformError(f"prune: no importance for unit {name!r}'s group")
    idxs = torch.argsort(importance)[:n_remove].tolist()
    group = graph.get_pruning_group(module, fn, idxs=sorted(idxs))
    if not graph.check_pruning_group(group):
        raise TransformError(f"prune: torch-pruning refused unit {name!r}'s group")
    group.prune()
