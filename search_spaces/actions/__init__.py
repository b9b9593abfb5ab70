"""The action registry: name -> handler. The one table everything else reads."""

from __future__ import annotations

from dataclasses import replace

from search_spaces.actions.base import ActionHandler, BuildContext
from search_spaces.actions.dynamic_skip import DynamicSkipHandler
from search_spaces.actions.lowrank import LowRankHandler
from search_spaces.actions.prune import PruneHandler
from search_spaces.actions.quantize import PrecisionHandler
from search_spaces.actions.skip import SkipHandler
from search_spaces.errors import UnknownActionError
from search_spaces.units import Unit

ACTIONS: dict[str, ActionHandler] = {}


def register(handler: ActionHandler) -> ActionHandler:
    """Add an action type; its ``name`` becomes a key of strategy JSON."""
    if handler.name in ACTIONS:
        raise ValueError(f"action {handler.name!r} is already registered")
    ACTIONS[handler.name] = handler
    return handler


for _handler in (
    PruneHandler(),
    LowRankHandler(),
    SkipHandler(),
    DynamicSkipHandler(),
    PrecisionHandler(),
):
    register(_handler)


def get_action(name: str) -> ActionHandler:
    """The handler for ``name``; an unknown name lists the registered ones."""
    try:
        return ACTIONS[name]
    except KeyError:
        raise UnknownActionError(
            f"unknown action {name!r}; known actions: {', '.join(sorted(ACTIONS))}"
        ) from None


def default_actions() -> list[str]:
    """The actions a search offers when the user does not list them (sorted)."""
    return sorted(name for name, h in ACTIONS.items() if h.searched_by_default)


def annotate(unit: Unit) -> Unit:
    """``unit`` with ``allowed`` filled in: action -> ``None`` or the reason it is masked."""
    return replace(unit, allowed={name: h.why_not(unit) for name, h in sorted(ACTIONS.items())})


__all__ = [
    "ACTIONS",
    "ActionHandler",
    "BuildContext",
    "annotate",
    "default_actions",
    "get_action",
    "register",
]
