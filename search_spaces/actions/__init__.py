"""The action registry: name -> handler. The one table everything else reads.

Code outside this package never asks for an action by name: it calls the functions here, which
ask every registered handler (see :mod:`search_spaces.actions.base` for the questions).

Example:
    >>> sorted(ACTIONS)  # doctest: +SKIP
    ['dynamic_skip', 'lowrank', 'precision', 'prune', 'skip']
    >>> removes_unit("skip", True)
    True
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from search_spaces.actions.base import ActionHandler, BuildContext, Contract
from search_spaces.actions.dynamic_skip import DynamicSkipHandler
from search_spaces.actions.lowrank import LowRankHandler
from search_spaces.actions.prune import PruneHandler
from search_spaces.actions.quantize import PrecisionHandler
from search_spaces.actions.skip import SkipHandler
from search_spaces.errors import UnknownActionError
from search_spaces.strategy import DEFAULT_KEY, Strategy
from search_spaces.units import Unit

if TYPE_CHECKING:
    from envs.workloads.inputs import Inputs
    from search_spaces.plan import Plan

ACTIONS: dict[str, ActionHandler] = {}


def register(handler: ActionHandler) -> ActionHandler:
    """Add an action type; its ``name`` becomes a key of strategy JSON."""
    if handler.name in ACTIONS:
        raise ValueError(f"action {handler.name!r} is already registered")
    ACTIONS[handler.name] = handler
    return handler


@contextmanager
def registered(handler: ActionHandler) -> Iterator[ActionHandler]:
    """Register ``handler`` inside the block and unregister it after (tests of a toy action).

    Units must be discovered inside the block to offer it (discovery asks every handler).
    """
    register(handler)
    try:
        yield handler
    finally:
        ACTIONS.pop(handler.name, None)


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


def handlers() -> list[ActionHandler]:
    """Every registered handler, in application order."""
    return sorted(ACTIONS.values(), key=lambda h: (h.order, h.name))


def default_actions() -> list[str]:
    """The actions a search offers when the user does not list them (sorted)."""
    return sorted(name for name, h in ACTIONS.items() if h.searched_by_default)


def annotate(unit: Unit) -> Unit:
    """``unit`` with ``allowed`` filled in: action -> ``None`` or the reason it is masked."""
    return replace(unit, allowed={name: h.why_not(unit) for name, h in sorted(ACTIONS.items())})


# -------------------------------------------------------------------- per value
def removes_unit(name: str, value: Any) -> bool:
    """Whether JSON ``value`` of action ``name`` removes the unit it is set on."""
    handler = get_action(name)
    return handler.removes_unit(handler.parse(value))


def plan_precisions(plan: Plan) -> dict[str, str]:
    """Unit name -> the runtime precision its actions ask for (units that ask for none left out)."""
    out: dict[str, str] = {}
    for unit, acts in plan.actions.items():
        for name, config in acts.items():
            precision = get_action(name).precision_of(config)
            if precision is not None:
                out[unit] = precision
    return out


def plan_is_structural(plan: Plan) -> bool:
    """Whether any action of ``plan`` changes the PyTorch module (not only its precision)."""
    return any(get_action(name).structural for acts in plan.actions.values() for name in acts)


def with_everywhere(strategy: Strategy, action: str, value: Any) -> Strategy:
    """``strategy`` with ``action`` set to ``value`` on every unit that allows it (the ``"*"``
    default) and removed from every unit that set it; the other actions stay.

    Example:
        >>> with_everywhere(Strategy({"a": {"prune": 0.5, "precision": "fp32"}}),
        ...                 "precision", "int8").to_dict()["units"]
        {'*': {'precision': 'int8'}, 'a': {'prune': 0.5}}
    """
    get_action(action).parse(value)  # an unknown action or a bad value fails here
    units: dict[str, dict[str, Any]] = {}
    for unit, acts in strategy.to_dict()["units"].items():
        kept = {k: v for k, v in acts.items() if k != action}
        if kept:
            units[unit] = kept
    units.setdefault(DEFAULT_KEY, {})[action] = value
    return Strategy(units)


# -------------------------------------------------------------------- per built model
def input_dependent(model: nn.Module) -> bool:
    """Whether the built ``model``'s cost depends on its input (latency timed over inputs)."""
    return any(h.input_dependent(model) for h in handlers())


def calibration_context(model: nn.Module) -> AbstractContextManager[Any]:
    """Where BatchNorm statistics of the built ``model`` are re-estimated."""
    stack = ExitStack()
    for handler in handlers():
        stack.enter_context(handler.calibration_context(model))
    return stack


def cheapest(model: nn.Module) -> AbstractContextManager[Any]:
    """Where the built ``model`` does the least work it can (FLOP contracts)."""
    stack = ExitStack()
    for handler in handlers():
        stack.enter_context(handler.cheapest(model))
    return stack


def after_build(
    model: nn.Module, train_inputs: Inputs, build_config: Any, recover: bool
) -> dict[str, Any]:
    """Run every handler's after-build step on ``model``; their notes, merged."""
    notes: dict[str, Any] = {}
    for handler in handlers():
        notes.update(handler.after_build(model, train_inputs, build_config, recover))
    return notes


def export_onnx(
    model: nn.Module,
    example_input: Inputs,
    path: Path,
    *,
    precisions: Mapping[str, str] | None = None,
    input_name: str = "input",
    output_name: str = "output",
    opset: int = 17,
) -> Path | None:
    """The ONNX file an action's own exporter wrote for ``model``, or ``None`` when no action
    needs one (the runtime's default export then serves).

    Raises:
        PrecisionNotExportableError: That exporter cannot apply ``precisions``.
    """
    for handler in handlers():
        written = handler.export_onnx(
            model,
            example_input,
            path,
            precisions=precisions or {},
            input_name=input_name,
            output_name=output_name,
            opset=opset,
        )
        if written is not None:
            return written
    return None


def measure_extras(model: nn.Module, eval_inputs: Inputs, batch_size: int) -> dict[str, Any]:
    """Facts every handler adds to a measurement's info (merged)."""
    extras: dict[str, Any] = {}
    for handler in handlers():
        extras.update(handler.measure_extras(model, eval_inputs, batch_size))
    return extras


def record_metrics(info: Mapping[str, Any], latency: Mapping[str, Any]) -> dict[str, float]:
    """The fields the actions add to a measured record (empty for most strategies).

    Args:
        info: The candidate measurement's info (``Measurement.info``).
        latency: Its ``LatencyStats.to_dict()``.
    """
    out: dict[str, float] = {}
    for handler in handlers():
        out.update(handler.record_metrics(info, latency))
    return out


def record_metric_names() -> tuple[str, ...]:
    """Every field :func:`record_metrics` can add, in registry order (the tracked metrics)."""
    return tuple(name for h in handlers() for name in h.metric_names)


__all__ = [
    "ACTIONS",
    "ActionHandler",
    "BuildContext",
    "Contract",
    "after_build",
    "annotate",
    "calibration_context",
    "cheapest",
    "default_actions",
    "export_onnx",
    "get_action",
    "handlers",
    "input_dependent",
    "measure_extras",
    "plan_is_structural",
    "plan_precisions",
    "record_metric_names",
    "record_metrics",
    "register",
    "registered",
    "removes_unit",
    "with_everywhere",
]
