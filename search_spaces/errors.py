"""Typed errors for strategies and transforms; each message names the unit and the rule."""

from __future__ import annotations


class StrategyError(ValueError):
    """Base class: a strategy cannot be applied as written."""


class MalformedStrategyError(StrategyError):
    """The strategy is not valid JSON or not shaped like a strategy."""


class UnknownUnitError(StrategyError, KeyError):
    """A strategy names a unit the model does not have."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class UnknownActionError(StrategyError):
    """A strategy names an action that is not registered."""


class InvalidActionValueError(StrategyError):
    """An action's value is out of range or of the wrong type."""


class ActionNotAllowedError(StrategyError):
    """An action is not allowed on a unit (the reason says why)."""


class TransformError(RuntimeError):
    """A transform failed while building a candidate (a bug or an unsupported model)."""


class PrecisionNotExportableError(StrategyError):
    """An action's own exporter cannot apply the per-unit precisions a strategy asks for."""
