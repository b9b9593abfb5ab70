"""``lowrank``: truncated-SVD factorisation of a Linear or 1×1 convolution.

Value: the kept rank as a fraction of ``min(in, out)``, ``0 < ratio <= 1`` (1 = unchanged). The
layer becomes two layers ``in → r → out`` with ``W ≈ (U√S)(√S Vᵀ)``; it only saves compute when
``r · (in + out) < in · out``, so the action is offered only where some listed rank does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from search_spaces.actions.base import ActionHandler, BuildContext
from search_spaces.canonical import replace_module
from search_spaces.errors import InvalidActionValueError, TransformError
from search_spaces.units import Unit


@dataclass(frozen=True)
class LowRankConfig:
    """The rank a layer is factorised to."""

    ratio: float
    """Kept rank ÷ ``min(in, out)``; 1.0 keeps the layer as it is."""

    def __post_init__(self) -> None:
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, int | float):
            raise InvalidActionValueError(f"lowrank ratio must be a number, got {self.ratio!r}")
        if not math.isfinite(self.ratio) or not 0.0 < self.ratio <= 1.0:
            raise InvalidActionValueError(f"lowrank ratio must be in (0, 1], got {self.ratio}")


def _rank(in_f: int, out_f: int, ratio: float) -> int:
    return max(1, round(min(in_f, out_f) * ratio))


class LowRankHandler(ActionHandler):
    summary = "truncated-SVD factorisation of a Linear or 1x1 convolution"
    name = "lowrank"
    order = 20
    choices = (1.0, 0.5, 0.25)
    identity = 1.0

    def parse(self, value: Any) -> LowRankConfig:
        return LowRankConfig(value)

    def flops_saving(self, value: Any) -> float:
        return 1.0 - float(self.parse(value).ratio)

    def why_not(self, unit: Unit) -> str | None:
        if unit.kind == "conv" and (unit.kernel != 1 or unit.groups != 1):
            return "only 1×1 convolutions without groups are factorised"
        if unit.kind not in ("conv", "linear"):
            return f"a {unit.kind}: factorise its layers"
        i, o = unit.in_channels, unit.out_channels
        if _rank(i, o, min(c for c in self.choices if c < 1)) * (i + o) >= i * o:
            return f"{i}→{o} is too narrow: no listed rank saves compute"
        return None

    def apply(self, ctx: BuildContext, unit: Unit, config: LowRankConfig) -> None:
        if config.ratio >= 1.0:
            return
        module = ctx.model.get_submodule(unit.name)
        replace_module(ctx.model, unit.name, factorize(module, config.ratio))
        ctx.invalidate_graph()


@torch.no_grad()
def factorize(module: nn.Module, ratio: float) -> nn.Sequential:
    """Two layers equivalent to ``module`` up to its rank-``r`` SVD truncation."""
    if isinstance(module, nn.Linear):
        weight = module.weight.detach()
    elif isinstance(module, nn.Conv1d | nn.Conv2d) and all(k == 1 for k in module.kernel_size):
        weight = module.weight.detach().flatten(1)
    else:
        raise TransformError(f"lowrank: cannot factorise a {type(module).__name__}")
    out_f, in_f = weight.shape
    r = _rank(in_f, out_f, ratio)
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    root = s[:r].sqrt()
    first_w, second_w = root[:, None] * vh[:r], u[:, :r] * root[None, :]
    bias = module.bias is not None
    first: nn.Module
    second: nn.Module
    if isinstance(module, nn.Linear):
        first, second = nn.Linear(in_f, r, bias=False), nn.Linear(r, out_f, bias=bias)
    else:
        conv = type(module)
        first = conv(in_f, r, 1, stride=module.stride, bias=False)  # type: ignore[arg-type]
        second = conv(r, out_f, 1, bias=bias)
        extra = (1,) * (module.weight.dim() - 2)
        first_w, second_w = first_w.reshape(r, in_f, *extra), second_w.reshape(out_f, r, *extra)
    first.weight.copy_(first_w)  # type: ignore[operator]
    second.weight.copy_(second_w)  # type: ignore[operator]
    if module.bias is not None:
        second.bias.copy_(module.bias.detach())  # type: ignore[union-attr,operator]
    return nn.Sequential(first, second)
