"""What an action is: a validated config, one handler, one registration.

Adding an action type means writing one module (or folder) with a frozen config dataclass
(validated in ``__post_init__``, built from the strategy's JSON value) and one
:class:`ActionHandler`, then ``register(...)``-ing it in ``search_spaces/actions/__init__.py``.
The handler answers every question code outside this package asks about an action: the env,
the decision space, the cost table, the surrogate, the baselines, the build, the runtimes, the
records and the contract tests read the registry, never an action's name.

Two kinds of question:

- **per value** (class attributes and ``config``/``value`` methods): is it structural, does it
  remove the unit, what does it exclude, what share of the unit's FLOPs does it save, which
  precision does it ask for, which whole-model features does the surrogate need;
- **per built model** (the hooks taking a ``model``): a handler that wraps the built model
  (dynamic skip) recognises its own wrapper and answers; every other handler's hook is a no-op.
  ``search_spaces.actions`` combines the hooks of all handlers into one function each.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from torch import nn

from search_spaces.units import Unit

if TYPE_CHECKING:
    from envs.workloads.inputs import Inputs  # search_spaces sits below envs: types only


@dataclass
class BuildContext:
    """State shared by the transforms while one candidate is built (a live object)."""

    model: nn.Module
    """The model being transformed in place (a private copy)."""
    example_input: Inputs
    """Batch-1 input for tracing."""
    precisions: dict[str, str] = field(default_factory=dict)
    """Module path -> non-fp32 precision, collected by the quantize action for the runtime."""
    gated: list[tuple[str, nn.Module, float]] = field(default_factory=list)
    """(module path, block, price α) of each block the dynamic-skip action gates, in order."""
    _graph: Any = None

    def dependency_graph(self) -> Any:
        """torch-pruning's DependencyGraph of the current model (rebuilt after invalidation)."""
        if self._graph is None:
            import torch_pruning as tp

            self._graph = tp.DependencyGraph().build_dependency(
                self.model, example_inputs=self.example_input, verbose=False
            )
        return self._graph

    def invalidate_graph(self) -> None:
        """Call after changing structure outside torch-pruning (heads, replacements)."""
        self._graph = None


@dataclass(frozen=True)
class Contract:
    """What the shared action contract suite may assert of an action.

    The suite applies the action's first non-identity choice to every unit that allows it
    (``{"*": {action: value}}``) and checks these promises on every test model and workload.
    """

    params: Literal["fewer", "same", "any"] = "fewer"
    """The built model's parameter count against the original's."""
    fewer_flops: bool = True
    """The built model does less matrix work (counted inside :meth:`ActionHandler.cheapest`)."""
    lowers_precision: bool = False
    """The build asks the runtime for the chosen precision on every covered module."""
    outputs_unchanged: bool = False
    """The built model still computes the original's outputs (an untrained controller)."""
    exact_export: bool = True
    """The deployed ONNX computes the torch model's outputs to float tolerance (False: only
    close in ranking, as int8 is)."""


class ActionHandler(ABC):
    """Applies one kind of action to one unit of a model, and answers for it elsewhere."""

    name: ClassVar[str]
    """Key in the strategy JSON (``"prune"``)."""
    order: ClassVar[int]
    """Application order: lower first (prune on the full graph before skip removes blocks)."""
    choices: ClassVar[tuple[Any, ...]]
    """JSON values offered to search agents, the identity first."""
    identity: ClassVar[Any]
    """The JSON value that means "leave the unit as it is"."""
    summary: ClassVar[str] = ""
    """One line for people (CLI help): what the action does and what it costs."""
    searched_by_default: ClassVar[bool] = True
    """Whether a search offers this action when the user does not list the actions."""
    structural: ClassVar[bool] = True
    """Whether it changes the PyTorch module (precision does not: the runtime applies it). A
    build re-estimates BatchNorm and recovers accuracy only when a structural action is used."""
    excludes: ClassVar[frozenset[str]] = frozenset()
    """Actions dropped model-wide from a searched strategy that uses this one."""
    collective: ClassVar[bool] = False
    """Whether a value pays off only where the neighbours take it too (int8's quantize pairs):
    probes then also measure each value applied to every unit at once."""
    metric_names: ClassVar[tuple[str, ...]] = ()
    """The fields :meth:`record_metrics` adds to a measured record (tracked as metrics)."""
    contract: ClassVar[Contract] = Contract()
    """What the contract test suite may assert (``tests/search_spaces/test_actions_contract``)."""

    # ---------------------------------------------------------------- per unit and value
    @abstractmethod
    def parse(self, value: Any) -> Any:
        """The validated config for a JSON value; raises ``InvalidActionValueError``."""

    @abstractmethod
    def why_not(self, unit: Unit) -> str | None:
        """``None`` if this action may be set on ``unit``, else the reason it is masked."""

    @abstractmethod
    def apply(self, ctx: BuildContext, unit: Unit, config: Any) -> None:
        """Transform ``ctx.model`` in place for ``unit``."""

    @abstractmethod
    def flops_saving(self, value: Any) -> float:
        """Fraction of the unit's FLOPs the JSON ``value`` saves (the unmeasured cost table)."""

    def finalize(self, ctx: BuildContext) -> None:  # noqa: B027 - optional hook
        """Called once after :meth:`apply` ran on every unit (whole-model wrapping)."""

    def is_identity(self, config: Any) -> bool:
        """Whether ``config`` leaves the unit unchanged."""
        return config == self.parse(self.identity)

    def removes_unit(self, config: Any) -> bool:
        """Whether ``config`` removes the unit: its other actions and those of the units inside
        it no longer apply."""
        return False

    def precision_of(self, config: Any) -> str | None:
        """The runtime precision ``config`` asks for (``None``: this action sets none)."""
        return None

    def offered_choices(self, precisions: frozenset[str] | None) -> tuple[Any, ...]:
        """The values a search offers when the runtime runs ``precisions`` (``None``: unknown)."""
        return tuple(self.choices)

    def surrogate_terms(self, shares: Mapping[str, float]) -> tuple[float, ...]:
        """Whole-model features this action adds to the surrogate's fit.

        Args:
            shares: For each action of the space, the fraction of the units offering it on
                which it is chosen.

        Returns:
            Features the additive cost table cannot express (default none).
        """
        return ()

    # ---------------------------------------------------------------- per built model
    def input_dependent(self, model: nn.Module) -> bool:
        """Whether ``model``'s cost depends on its input (latency is then timed over inputs)."""
        return False

    def calibration_context(self, model: nn.Module) -> AbstractContextManager[Any]:
        """Where BatchNorm statistics of ``model`` are re-estimated (the full backbone)."""
        return nullcontext()

    def cheapest(self, model: nn.Module) -> AbstractContextManager[Any]:
        """Where ``model`` does the least work it can (the contract counts FLOPs inside it)."""
        return nullcontext()

    def after_build(
        self, model: nn.Module, train_inputs: Inputs, build_config: Any, recover: bool
    ) -> dict[str, Any]:
        """Train what the action added to ``model`` (after BatchNorm re-estimation, before the
        recovery fine-tune, which runs when ``recover``); returns notes for the record.

        ``build_config`` is the ``runners.build.BuildConfig`` of the candidate.
        """
        return {}

    def export_onnx(
        self,
        model: nn.Module,
        example_input: Inputs,
        path: Path,
        *,
        precisions: Mapping[str, str],
        input_name: str,
        output_name: str,
        opset: int,
    ) -> Path | None:
        """Write ``model`` to ``path`` with this action's own exporter, or ``None`` when the
        default (TorchScript) export serves. Raises ``PrecisionNotExportableError`` if
        ``precisions`` cannot be applied to what it writes."""
        return None

    def measure_extras(
        self, model: nn.Module, eval_inputs: Inputs, batch_size: int
    ) -> dict[str, Any]:
        """Facts of ``model`` on the eval inputs merged into the measurement's info."""
        return {}

    def record_metrics(
        self, info: Mapping[str, Any], latency: Mapping[str, Any]
    ) -> dict[str, float]:
        """Fields (:attr:`metric_names`) added to a measured record, from its ``info`` and its
        ``LatencyStats.to_dict()``; empty when the record does not use this action."""
        return {}
