"""``dynamic_skip``: the handler and its config (the JSON value is the block's price α).

Every gated block of a model shares one controller (:mod:`.model`); the controller is trained
after the build (:meth:`DynamicSkipHandler.after_build`, REINFORCE in :mod:`.training`), where α
is the reward's cost of executing the block: larger α, more skipping. The built model is
exported with each gate an ONNX ``If`` (:mod:`.onnx`), so its latency depends on the input.

Not searched unless asked for (``--actions ...,dynamic_skip``): each candidate that uses it
trains a controller and exports through the dynamo exporter, which costs seconds per candidate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from search_spaces.actions.base import ActionHandler, BuildContext, Contract
from search_spaces.actions.dynamic_skip.model import DynamicSkipModel, find_dynamic, gate_blocks
from search_spaces.actions.skip import Skipped, block_reason
from search_spaces.errors import InvalidActionValueError, PrecisionNotExportableError
from search_spaces.units import RESIDUAL_TYPES, Unit

if TYPE_CHECKING:
    from envs.workloads.inputs import Inputs  # search_spaces sits below envs: types only

HALF_SKIP_ALPHA = 8.0
"""The α at which the unmeasured cost table expects half the inputs to skip a block (saving
``α / (α + 8)``). Loosely fitted to benchmarks/results/dynamic_skip.md (no recovery): over both
built-ins a block was skipped on 24 % of inputs at α 2 and 28 % at α 4 (the table: 20 %, 33 %)."""


@dataclass(frozen=True)
class DynamicSkipConfig:
    """The price of executing one gated block."""

    alpha: float
    """Reward cost (nats of label log-likelihood) of running the block on every input, summed
    over gated blocks and divided by their number; ``0`` leaves the block ungated."""

    def __post_init__(self) -> None:
        if (
            isinstance(self.alpha, bool)
            or not isinstance(self.alpha, int | float)
            or not math.isfinite(self.alpha)
            or self.alpha < 0
        ):
            raise InvalidActionValueError(
                f"dynamic_skip must be a price alpha >= 0 (0 = not gated), got {self.alpha!r}"
            )


class DynamicSkipHandler(ActionHandler):
    summary = "per-input gating of residual blocks; trains a controller per candidate"
    name = "dynamic_skip"
    order = 35  # after skip (a skipped block is not gated), before precision
    # Without recovery, α 2 keeps static-skip accuracy on both built-ins; 4 gains 4 points over
    # static on mnist1d-transformer and loses 0.4 on digits (benchmarks/results/dynamic_skip.md).
    # After full recovery static skips win on both (dynamic_skip_full.md); the choices stay, as
    # every candidate is measured and the search keeps a gated one only where it pays.
    choices = (0.0, 2.0, 4.0)
    identity = 0.0
    searched_by_default = False
    # its ONNX comes from the dynamo exporter, whose node names the per-unit precision mapping
    # cannot read yet: a strategy that gates a block runs fp32 everywhere
    excludes = frozenset({"precision"})
    metric_names = (
        "executed_blocks",
        "executed_share",
        "gated_blocks",
        "dynamic_alpha",
        "latency_input_median_ms",
        "latency_input_p90_ms",
    )
    # an untrained controller runs every block; closed gates remove their compute
    contract = Contract(params="any", fewer_flops=True, outputs_unchanged=True)

    def parse(self, value: Any) -> DynamicSkipConfig:
        if isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        return DynamicSkipConfig(value)

    def why_not(self, unit: Unit) -> str | None:
        return block_reason(unit) or unit.gate_reason

    def flops_saving(self, value: Any) -> float:
        alpha = self.parse(value).alpha
        return alpha / (alpha + HALF_SKIP_ALPHA)

    def apply(self, ctx: BuildContext, unit: Unit, config: DynamicSkipConfig) -> None:
        module = ctx.model.get_submodule(unit.name)
        if isinstance(module, Skipped):
            return  # statically skipped: nothing left to gate
        ctx.gated.append((unit.name, module, config.alpha))

    def finalize(self, ctx: BuildContext) -> None:
        if not ctx.gated:
            return
        blocks = []
        for name, module, _ in ctx.gated:
            channels_last = isinstance(module, RESIDUAL_TYPES)
            width = _input_width(module, channels_last)
            blocks.append((name, width, channels_last))
        ctx.model = gate_blocks(ctx.model, blocks, [a for _, _, a in ctx.gated])
        ctx.invalidate_graph()

    # ---------------------------------------------------------------- the gated model
    def input_dependent(self, model: nn.Module) -> bool:
        return find_dynamic(model) is not None

    def calibration_context(self, model: nn.Module) -> AbstractContextManager[Any]:
        # statistics of the full backbone: the gates are not trained yet
        dynamic = find_dynamic(model)
        return dynamic.forced(True) if dynamic is not None else nullcontext()

    def cheapest(self, model: nn.Module) -> AbstractContextManager[Any]:
        dynamic = find_dynamic(model)
        return dynamic.forced(False) if dynamic is not None else nullcontext()

    def after_build(
        self, model: nn.Module, train_inputs: Inputs, build_config: Any, recover: bool
    ) -> dict[str, Any]:
        from search_spaces.actions.dynamic_skip.training import train_controller

        dynamic = find_dynamic(model)
        if dynamic is None:
            return {}
        stats = train_controller(dynamic, _single(train_inputs), build_config.gates)
        if recover:
            # SkipNet's and BlockDrop's joint fine-tune: the backbone learns, under its
            # controller's decisions (controller frozen), the skips it will actually see
            dynamic.backbone.requires_grad_(True)
        return {"gate_training": asdict(stats)}

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
        from search_spaces.actions.dynamic_skip.onnx import export_gated_onnx

        dynamic = find_dynamic(model)
        if dynamic is None:
            return None
        lowered = sorted(m for m, p in precisions.items() if p != "fp32")
        if lowered:
            raise PrecisionNotExportableError(
                f"a dynamic-skip model runs fp32 only, but {', '.join(lowered)} asked for "
                f"{sorted(set(precisions.values()) - {'fp32'})}: per-unit precision reads "
                f"TorchScript node names, and the If-node export comes from the dynamo exporter"
            )
        return export_gated_onnx(
            dynamic,
            _single(example_input),
            path,
            input_name=input_name,
            output_name=output_name,
            opset=opset,
        )

    def measure_extras(
        self, model: nn.Module, eval_inputs: Inputs, batch_size: int
    ) -> dict[str, Any]:
        from search_spaces.actions.dynamic_skip.training import gate_statistics

        dynamic = find_dynamic(model)
        if dynamic is None:
            return {}
        # decisions of the deployed (thresholded) controller over the whole eval split
        stats = gate_statistics(dynamic, _single(eval_inputs), batch_size)
        return {
            "dynamic": {
                **stats,
                "alpha": sum(dynamic.alphas) / len(dynamic.alphas),
                "gated": list(dynamic.gated),
            }
        }

    def record_metrics(
        self, info: Mapping[str, Any], latency: Mapping[str, Any]
    ) -> dict[str, float]:
        gates = info.get("dynamic")
        if not isinstance(gates, Mapping):
            return {}
        return {
            "executed_blocks": gates["executed_blocks"],
            "executed_share": gates["executed_share"],
            "gated_blocks": gates["gated_blocks"],
            "dynamic_alpha": gates["alpha"],
            "latency_input_median_ms": _or_nan(latency.get("input_median_ms")),
            "latency_input_p90_ms": _or_nan(latency.get("input_p90_ms")),
        }


def _or_nan(value: float | None) -> float:
    """A latency figure that was not taken (not timed) reads as NaN."""
    return math.nan if value is None else value


def _input_width(module: Any, channels_last: bool) -> int:
    """Feature width of a block's input, read from its first layer after pruning."""
    for m in module.modules():
        if isinstance(m, nn.Conv1d | nn.Conv2d):
            return int(m.in_channels)
        if isinstance(m, nn.Linear | nn.LayerNorm):
            return int(m.in_features if isinstance(m, nn.Linear) else m.normalized_shape[0])
    raise InvalidActionValueError(f"cannot tell the input width of block {type(module).__name__}")


__all__ = ["HALF_SKIP_ALPHA", "DynamicSkipConfig", "DynamicSkipHandler", "DynamicSkipModel"]


def _single(x: Inputs) -> torch.Tensor:
    """The one input tensor of a gated model (the controller reads a single tensor)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"dynamic skip gates models with one tensor input; this one takes a {type(x).__name__}"
        )
    return x
