"""``precision``: per-unit numeric precision, applied by the runtime when it compiles.

Values: ``fp32`` (identity), ``int8`` (ONNX Runtime static QDQ quantization, calibrated on the
train split, only this unit's nodes), ``fp16`` (GPU runtimes only; CPU runtimes refuse it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from search_spaces.actions.base import ActionHandler, BuildContext
from search_spaces.errors import InvalidActionValueError
from search_spaces.units import Unit

PRECISIONS = ("fp32", "int8", "fp16")


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
    name = "precision"
    order = 40
    choices = ("fp32", "int8")  # fp16 only where a GPU runtime is chosen
    identity = "fp32"

    def parse(self, value: Any) -> PrecisionConfig:
        return PrecisionConfig(value)

    def why_not(self, unit: Unit) -> str | None:
        if unit.kind in ("conv", "linear"):
            return None
        return f"a {unit.kind}: set precision on its layers"

    def apply(self, ctx: BuildContext, unit: Unit, config: PrecisionConfig) -> None:
        # Low-rank may have replaced the layer by a Sequential: the path still covers it.
        ctx.precisions[unit.name] = config.precision
