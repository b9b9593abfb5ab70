"""Decision units: the layers and blocks the agent decides on, discovered from the model.

A unit is one module: a ``conv`` or ``linear`` layer, an ``attention`` layer (heads), or a
``block`` (a residual block or transformer layer that may be skipped). Discovery records what
the model's structure allows for each unit; the actions (``search_spaces.actions``) turn those
facts into allowed/masked-with-a-reason.

Channel coupling comes from torch-pruning's ``DependencyGraph``: every group of layers whose
channels must be removed together (a residual stream, a depthwise pair) is decided by one
*representative* unit, the first of the group in execution order; the other members name it in
``coupled_to``. Every representative is trial-pruned on a copy of the model, so a group that
cannot be pruned (it feeds the output, or an op the graph does not understand) is masked with the
error it produced instead of crashing a search later.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from search_spaces.canonical import EncoderLayer
from search_spaces.errors import UnknownUnitError

UNIT_KINDS = ("conv", "linear", "attention", "block")
LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Linear)
RESIDUAL_TYPES = (EncoderLayer, nn.TransformerEncoderLayer)


@dataclass(frozen=True)
class Unit:
    """One decision unit and the facts the agent and the actions see about it."""

    index: int
    """Position in execution order (0-based)."""
    name: str
    """Module path in the (canonicalised) model, e.g. ``layer1.0.conv1``; the strategy key."""
    kind: str
    """``conv``, ``linear``, ``attention`` or ``block``."""
    module_type: str
    """Class name of the module."""
    in_channels: int
    """Input channels / features (for blocks and attention: width of the input)."""
    out_channels: int
    """Output channels / features (attention: number of heads × head width)."""
    kernel: int = 1
    """Kernel size (first dimension) for convolutions, else 1."""
    stride: int = 1
    """Stride (first dimension) for convolutions, else 1."""
    groups: int = 1
    """Convolution groups (``groups == in_channels`` is depthwise)."""
    heads: int = 0
    """Attention heads (attention units only)."""
    input_shape: tuple[int, ...] = ()
    """Shape of the unit's input for the example input (batch 1)."""
    output_shape: tuple[int, ...] = ()
    """Shape of the unit's output for the example input (batch 1; a tuple output: its first
    item's)."""
    output_items: int = 0
    """Blocks returning a tuple (a Hugging Face layer: hidden state first): its length; 0 for
    a tensor."""
    flops: int = 0
    """FLOPs (2 × MACs of matmuls/convs) of one batch-1 forward through the unit."""
    params: int = 0
    """Parameters inside the unit."""
    flops_share: float = 0.0
    """``flops`` ÷ the model's FLOPs (blocks contain layers, so shares overlap)."""
    prune_group: tuple[str, ...] = ()
    """Representatives: the layers whose output channels are removed with this unit's."""
    coupled_to: str | None = None
    """Non-representatives: the unit that decides this layer's channels."""
    prune_reason: str | None = None
    """Why the structure forbids pruning this unit (``None``: the graph allows it)."""
    skip_reason: str | None = None
    """Why this unit cannot be skipped (``None``: a residual block that can)."""
    gate_reason: str | None = None
    """Why a per-input gate cannot wrap this block although it may be skipped (a tuple
    output, a model that does not take one tensor)."""
    allowed: dict[str, str | None] = field(default_factory=dict)
    """Action name -> ``None`` if allowed, else the reason it is masked (set by the registry)."""

    def allows(self, action: str) -> bool:
        """Whether ``action`` may be set on this unit."""
        return action in self.allowed and self.allowed[action] is None

    @property
    def skippable(self) -> bool:
        return self.kind == "block" and self.skip_reason is None

    def embedding(self, num_units: int) -> np.ndarray:
        """Fixed-length float32 features of this unit for an agent's observation.

        ``[index/N, one-hot kind (4), log2(in)/12, log2(out)/12, kernel/7, stride/4,
        depthwise, heads/16, log10(FLOPs)/10, log10(params)/8, FLOPs share, skippable,
        prunable, and one flag per registered action: allowed]``.
        """
        kind = [float(self.kind == k) for k in UNIT_KINDS]
        feats = [
            self.index / max(num_units - 1, 1),
            *kind,
            math.log2(self.in_channels + 1) / 12,
            math.log2(self.out_channels + 1) / 12,
            self.kernel / 7,
            self.stride / 4,
            float(self.groups > 1 and self.groups == self.in_channels),
            self.heads / 16,
            math.log10(self.flops + 1) / 10,
            math.log10(self.params + 1) / 8,
            self.flops_share,
            float(self.skippable),
            float(self.prune_reason is None and self.coupled_to is None),
            *(float(reason is None) for _, reason in sorted(self.allowed.items())),
        ]
        return np.asarray(feats, dtype=np.float32)

    def describe(self) -> str:
        """A short shape description for tables: ``32→64 k3 s2``, ``4 heads × 32``."""
        if self.kind == "attention":
            return f"{self.heads} heads × {self.out_channels // max(self.heads, 1)}"
        if self.kind == "block":
            shape_in = "×".join(map(str, self.input_shape[1:]))
            shape_out = "×".join(map(str, self.output_shape[1:]))
            return shape_in if shape_in == shape_out else f"{shape_in}→{shape_out or '?'}"
        text = f"{self.in_channels}→{self.out_channels}"
        if self.kind == "conv":
            text += f" k{self.kernel} s{self.stride}"
            if self.groups > 1:
                text += f" g{self.groups}"
        return text


@dataclass(frozen=True)
class UnitTable:
    """The ordered decision units of one model."""

    units: tuple[Unit, ...]
    total_flops: int
    total_params: int

    def __iter__(self) -> Iterator[Unit]:
        return iter(self.units)

    def __len__(self) -> int:
        return len(self.units)

    def __contains__(self, name: object) -> bool:
        return any(u.name == name for u in self.units)

    @property
    def names(self) -> list[str]:
        return [u.name for u in self.units]

    def get(self, name: str) -> Unit:
        """The unit called ``name``; an unknown name raises with the closest known names."""
        for unit in self.units:
            if unit.name == name:
                return unit
        close = difflib.get_close_matches(name, self.names, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownUnitError(
            f"no decision unit {name!r} in this model{hint} "
            f"({len(self.units)} units; `layerpilot profile` lists them)"
        )
