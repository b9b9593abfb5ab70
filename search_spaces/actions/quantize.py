"""``precision``: per-unit numeric precision, applied by the runtime when it compiles.

Values: ``fp32`` (identity), ``int8`` (ONNX Runtime static QDQ quantization, calibrated on the
train split, only this unit's nodes), ``fp16`` (GPU runtimes only; CPU runtimes refuse it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from search_spaces.actions.base import ActionHandler, BuildContext, Contract
from search_spaces.errors import InvalidActionValueError
from search_spaces.units import Unit

PRECISIONS = ("fp32", "int8", "fp16")
PRECISION_FLOP_COST = {"fp32": 1.0, "fp16": 0.5, "int8": 0.25}
"""Ideal cost of a FLOP in each precision relative to fp32 (the unmeasured cost table)."""


@dataclass(frozen=True)
class PrecisionConfig:
    """The precision a unit runs in."""

    precision: str
    """One of ``fp32``, ``int8``, ``fp16``."""

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise InvalidActionValueError(
                f"precision must be one of {list(PRECISIONS)}, got {self.precision!r}"
            )


class PrecisionHandler(ActionHandler):
    summary = "per-unit numeric precision (int8; fp16 on GPU runtimes)"
    name = "precision"
    order = 40
    choices = ("fp32", "int8")  # fp16 only where a GPU runtime is chosen
    identity = "fp32"

    structural = False  # the runtime applies it when it compiles
    collective = True  # a lone int8 layer pays a quantize/dequantize pair at both ends
    contract = Contract(params="same", fewer_flops=False, lowers_precision=True, exact_export=False)

    def parse(self, value: Any) -> PrecisionConfig:
        return PrecisionConfig(value)

    def precision_of(self, config: PrecisionConfig) -> str | None:
        return config.precision

    def flops_saving(self, value: Any) -> float:
        return 1.0 - PRECISION_FLOP_COST[self.parse(value).precision]

    def offered_choices(self, precisions: frozenset[str] | None) -> tuple[Any, ...]:
        if precisions is None:
            return tuple(self.choices)
        return (self.identity, *sorted(p for p in precisions if p != self.identity))

    def surrogate_terms(self, shares: Mapping[str, float]) -> tuple[float, ...]:
        # int8 pays off only where neighbours are int8 too (fewer quantize/dequantize pairs), so
        # the *fraction* of int8 units carries the effect, and not linearly
        share = shares[self.name]
        return (share, share**2, share**4)

    def why_not(self, unit: Unit) -> str | None:
        if unit.kind in ("conv", "linear"):
            return None
        return f"a {unit.kind}: set precision on its layers"

    def apply(self, ctx: BuildContext, unit: Unit, config: PrecisionConfig) -> None:
        # Low-rank may have replaced the layer by a Sequential: the path still covers it.
        ctx.precisions[unit.name] = config.precision
