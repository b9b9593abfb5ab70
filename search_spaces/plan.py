"""From a `Strategy` to a transformed model: resolve against the units, then apply in order."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

from search_spaces.actions import BuildContext, get_action, handlers
from search_spaces.errors import ActionNotAllowedError, InvalidActionValueError
from search_spaces.strategy import DEFAULT_KEY, Strategy
from search_spaces.units import UnitTable

if TYPE_CHECKING:
    from envs.workloads.inputs import Inputs  # search_spaces sits below envs: types only


@dataclass(frozen=True)
class Plan:
    """A strategy resolved against one model's units: only the non-identity actions."""

    actions: dict[str, dict[str, Any]]
    """Unit name -> {action name: validated config}."""

    def __bool__(self) -> bool:
        return bool(self.actions)

    def uses(self, action: str) -> bool:
        return any(action in acts for acts in self.actions.values())


def resolve(strategy: Strategy, units: UnitTable) -> Plan:
    """Validate ``strategy`` against ``units`` and expand the ``"*"`` default.

    Raises:
        UnknownUnitError: a unit name the model does not have.
        UnknownActionError: an action that is not registered.
        InvalidActionValueError: a value out of range (the message names the unit).
        ActionNotAllowedError: an action masked on that unit, with the reason.
    """
    defaults = {
        name: _parse(DEFAULT_KEY, name, value)
        for name, value in strategy.units.get(DEFAULT_KEY, {}).items()
    }
    explicit: dict[str, dict[str, Any]] = {}
    for unit_name, acts in strategy.units.items():
        if unit_name == DEFAULT_KEY:
            continue
        unit = units.get(unit_name)
        explicit[unit_name] = {}
        for name, value in acts.items():
            config = _parse(unit_name, name, value)
            reason = unit.allowed.get(name, "not applicable")
            if reason is not None and not get_action(name).is_identity(config):
                raise ActionNotAllowedError(
                    f"action {name!r} is not allowed on unit {unit_name!r} ({unit.kind}): {reason}"
                )
            explicit[unit_name][name] = config
    actions: dict[str, dict[str, Any]] = {}
    for unit in units:
        chosen = {n: c for n, c in defaults.items() if unit.allows(n)}
        chosen.update(explicit.get(unit.name, {}))
        chosen = {n: c for n, c in chosen.items() if not get_action(n).is_identity(c)}
        if chosen:
            actions[unit.name] = chosen
    return Plan(actions)


def _parse(unit_name: str, action: str, value: Any) -> Any:
    handler = get_action(action)
    try:
        return handler.parse(value)
    except InvalidActionValueError as exc:
        raise InvalidActionValueError(f"unit {unit_name!r}, action {action!r}: {exc}") from None


def apply_plan(
    model: nn.Module, units: UnitTable, plan: Plan, example_input: Inputs
) -> tuple[nn.Module, dict[str, str]]:
    """A transformed copy of ``model`` and its per-module precisions. ``model`` is untouched.

    Actions run in registry order (prune on the full graph, then low-rank, then skip), units in
    execution order, so the same plan always gives the same model. A unit inside one that an
    earlier action removed (a skipped block) is left alone by the later actions.
    """
    ctx = BuildContext(copy.deepcopy(model).eval(), example_input)
    for handler in handlers():
        for unit in units:
            config = plan.actions.get(unit.name, {}).get(handler.name)
            if config is None or _inside_removed(unit.name, plan, handler.order):
                continue
            handler.apply(ctx, unit, config)
        handler.finalize(ctx)
    ctx.model.eval()
    return ctx.model, dict(ctx.precisions)


def _inside_removed(name: str, plan: Plan, order: int) -> bool:
    """Whether ``name`` lies inside a unit an action of ``plan`` removes (one that ran already,
    i.e. before ``order``)."""
    return any(
        name.startswith(block + ".")
        and any(
            get_action(action).order < order and get_action(action).removes_unit(config)
            for action, config in acts.items()
        )
        for block, acts in plan.actions.items()
    )
