"""What can be done to a layer: the strategy, decision units and the action transforms."""

from __future__ import annotations

from search_spaces.actions import ACTIONS, get_action, register
from search_spaces.canonical import canonicalize
from search_spaces.discovery import discover_units
from search_spaces.errors import (
    ActionNotAllowedError,
    InvalidActionValueError,
    MalformedStrategyError,
    StrategyError,
    TransformError,
    UnknownActionError,
    UnknownUnitError,
)
from search_spaces.plan import Plan, apply_plan, resolve
from search_spaces.strategy import Strategy
from search_spaces.units import Unit, UnitTable

__all__ = [
    "ACTIONS",
    "ActionNotAllowedError",
    "InvalidActionValueError",
    "MalformedStrategyError",
    "Plan",
    "Strategy",
    "StrategyError",
    "TransformError",
    "Unit",
    "UnitTable",
    "UnknownActionError",
    "UnknownUnitError",
    "apply_plan",
    "canonicalize",
    "discover_units",
    "get_action",
    "register",
    "resolve",
]
