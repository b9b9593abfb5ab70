"""Decision-unit discovery: trace a (canonicalised) model and find the units it offers.

Split from :mod:`search_spaces.units` (the `Unit` value and its table) so that the action
registry, which reads units, and discovery, which asks the registry what each unit allows,
depend on each other one way only: ``units <- actions <- discovery``.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from search_spaces.actions import annotate  # the registry decides allowed/masked
from search_spaces.heads import HeadLayout, head_layout
from search_spaces.probing import call_model, dead_modules, trial_heads
from search_spaces.units import LAYER_TYPES, RESIDUAL_TYPES, Unit, UnitTable

if TYPE_CHECKING:
    from envs.workloads.inputs import Inputs  # search_spaces sits below envs: types only


def discover_units(model: nn.Module, example_input: Inputs) -> UnitTable:
    """Find the decision units of a (canonicalised) model, in execution order.

    A module whose parameters do not reach the model's output (a Hugging Face pooler behind a
    forward that returns the hidden states) computes nothing the exported graph keeps: it is
    not a unit. Never raises for an unusual model: what cannot be analysed is masked with a
    reason.
    """
    from runners.metrics import flops_by_module  # a leaf module: no cycle back here

    model = model.eval()
    trace = _trace_calls(model, example_input)
    flops = flops_by_module(model, example_input)
    total_flops = flops.get("", 0) or sum(v for k, v in flops.items() if "." not in k)
    modules = dict(model.named_modules())
    dead = dead_modules(model, example_input)
    layouts = {
        name: layout for name in trace.order if (layout := head_layout(model, name)) is not None
    }
    head_reasons = trial_heads(
        model, example_input, list(layouts.values()), trace.model_output_shape
    )
    attention_children = {
        path for layout in layouts.values() for path in (*layout.projections, layout.out)
    }

    raw: list[Unit] = []
    for name in trace.order:
        if name in dead:
            continue
        mod = modules[name]
        params = sum(p.numel() for p in mod.parameters())
        base: dict[str, Any] = {
            "index": 0,
            "name": name,
            "module_type": type(mod).__name__,
            "input_shape": trace.inputs.get(name, ()),
            "output_shape": trace.outputs.get(name, ()),
            "flops": flops.get(name, 0),
            "params": params,
            "flops_share": flops.get(name, 0) / total_flops if total_flops else 0.0,
        }
        if name in layouts:
            layout = layouts[name]
            raw.append(
                Unit(
                    kind="attention",
                    in_channels=int(getattr(model.get_submodule(layout.q), "in_features", 0)),
                    out_channels=layout.heads * layout.head_dim,
                    heads=layout.heads,
                    prune_reason="only one head" if layout.heads < 2 else head_reasons.get(name),
                    **base,
                )
            )
        elif isinstance(mod, nn.Conv1d | nn.Conv2d):
            raw.append(
                Unit(
                    kind="conv",
                    in_channels=mod.in_channels,
                    out_channels=mod.out_channels,
                    kernel=int(mod.kernel_size[0]),
                    stride=int(mod.stride[0]),
                    groups=mod.groups,
                    **base,
                )
            )
        elif isinstance(mod, nn.Linear):
            raw.append(
                Unit(
                    kind="linear",
                    in_channels=mod.in_features,
                    out_channels=mod.out_features,
                    prune_reason=(
                        f"inside attention unit {_owner(name, layouts)!r}: prune its heads there"
                        if name in attention_children
                        else None
                    ),
                    **base,
                )
            )
        elif name and _is_block_candidate(name, mod, modules, layouts):
            width = base["input_shape"][1] if len(base["input_shape"]) > 1 else 0
            raw.append(
                Unit(
                    kind="block",
                    in_channels=int(width),
                    out_channels=int(base["output_shape"][1])
                    if len(base["output_shape"]) > 1
                    else 0,
                    output_items=trace.items.get(name, 0),
                    skip_reason=_why_not_skippable(name, mod, trace, layouts),
                    gate_reason=_why_not_gated(name, example_input, trace),
                    prune_reason="a block: prune its layers",
                    **base,
                )
            )

    raw = _assign_prune_groups(model, example_input, raw, trace)
    units = tuple(annotate(replace(u, index=i)) for i, u in enumerate(raw))
    return UnitTable(units, int(total_flops), int(sum(p.numel() for p in model.parameters())))


def _owner(name: str, layouts: dict[str, HeadLayout]) -> str:
    """The attention unit whose heads a projection belongs to."""
    return next(a for a, lay in layouts.items() if name in (*lay.projections, lay.out))


@dataclass
class _Trace:
    order: list[str] = field(default_factory=list)
    inputs: dict[str, tuple[int, ...]] = field(default_factory=dict)
    outputs: dict[str, tuple[int, ...]] = field(default_factory=dict)
    items: dict[str, int] = field(default_factory=dict)
    """Modules returning a tuple or list whose first item is a tensor: its length."""
    non_tensor_output: set[str] = field(default_factory=set)
    model_output_shape: tuple[int, ...] = ()


def _trace_calls(model: nn.Module, example_input: Inputs) -> _Trace:
    trace = _Trace()
    handles = []

    def pre(name: str):
        def hook(_mod: nn.Module, args: tuple[Any, ...]) -> None:
            if name not in trace.inputs:
                trace.order.append(name)
                first = args[0] if args else None
                trace.inputs[name] = tuple(first.shape) if isinstance(first, torch.Tensor) else ()

        return hook

    def post(name: str):
        def hook(_mod: nn.Module, _args: tuple[Any, ...], out: Any) -> None:
            if name in trace.outputs or name in trace.non_tensor_output:
                return
            if isinstance(out, torch.Tensor):
                trace.outputs[name] = tuple(out.shape)
            elif isinstance(out, tuple | list) and out and isinstance(out[0], torch.Tensor):
                trace.outputs[name] = tuple(out[0].shape)
                trace.items[name] = len(out)
            else:
                trace.non_tensor_output.add(name)

        return hook

    for name, mod in model.named_modules():
        if name:
            handles.append(mod.register_forward_pre_hook(pre(name)))
            handles.append(mod.register_forward_hook(post(name)))
    try:
        with torch.no_grad():
            out = call_model(model, example_input)
    finally:
        for h in handles:
            h.remove()
    trace.model_output_shape = tuple(out.shape) if isinstance(out, torch.Tensor) else ()
    return trace


def _is_block_candidate(
    name: str, mod: nn.Module, modules: dict[str, nn.Module], layouts: dict[str, HeadLayout]
) -> bool:
    """A non-leaf module holding compute layers, repeated in a Sequential/ModuleList."""
    if name in layouts or isinstance(mod, LAYER_TYPES):
        return False
    if isinstance(mod, RESIDUAL_TYPES):
        return True
    if isinstance(mod, nn.Sequential | nn.ModuleList):
        return False
    parent_name = name.rpartition(".")[0]
    parent = modules.get(parent_name)
    in_container = isinstance(parent, nn.Sequential | nn.ModuleList) and len(parent) >= 2
    has_compute = any(isinstance(m, LAYER_TYPES) for m in mod.modules())
    return in_container and has_compute


def _why_not_gated(name: str, example_input: Inputs, trace: _Trace) -> str | None:
    """Why dynamic skip cannot gate the block (its controller reads one input tensor and
    mixes the block's tensor output with its input)."""
    if not isinstance(example_input, torch.Tensor):
        kind = type(example_input).__name__
        return f"the model takes a {kind} of inputs; the gate's controller reads one tensor"
    if name in trace.items:
        return "returns a tuple (a Hugging Face layer): the gate mixes tensors; skip takes it"
    return None


def _why_not_skippable(
    name: str, mod: nn.Module, trace: _Trace, layouts: dict[str, HeadLayout]
) -> str | None:
    if name in trace.non_tensor_output:
        return (
            "returns neither a tensor nor a tuple starting with one; skip needs the hidden "
            "state in and out"
        )
    shape_in, shape_out = trace.inputs.get(name, ()), trace.outputs.get(name, ())
    if not shape_in or shape_in != shape_out:
        return (
            f"changes the shape {list(shape_in[1:])} → {list(shape_out[1:])}; "
            "skipping it would break the next layer"
        )
    if isinstance(mod, RESIDUAL_TYPES):
        return None
    if any(a == name or a.startswith(f"{name}.") for a in layouts):
        return None  # a transformer layer: attention on a residual stream of unchanged shape
    try:
        graph = torch.fx.symbolic_trace(mod).graph
    except Exception as exc:
        return f"cannot verify a residual connection (torch.fx could not trace it: {exc!s:.80})"
    placeholders = [n for n in graph.nodes if n.op == "placeholder"][:1]
    adds = {operator.add, operator.iadd, torch.add}
    for node in graph.nodes:
        is_add = (node.op == "call_function" and node.target in adds) or (
            node.op == "call_method" and node.target in ("add", "add_")
        )
        if is_add and any(arg in placeholders for arg in node.args):
            return None
    return "no residual connection from its input: skipping it would drop the whole computation"


def _out_channels_fn(mod: nn.Module) -> Any:
    import torch_pruning as tp

    return (
        tp.prune_linear_out_channels if isinstance(mod, nn.Linear) else tp.prune_conv_out_channels
    )


def _build_graph(model: nn.Module, example_input: Inputs) -> Any:
    import torch_pruning as tp

    return tp.DependencyGraph().build_dependency(model, example_inputs=example_input, verbose=False)


def _assign_prune_groups(
    model: nn.Module, example_input: Inputs, units: Sequence[Unit], trace: _Trace
) -> list[Unit]:
    """Group coupled layers with torch-pruning and trial-prune each group's representative."""
    layer_units = [u for u in units if u.kind in ("conv", "linear") and u.prune_reason is None]
    if not layer_units:
        return list(units)
    try:
        graph = _build_graph(model, example_input)
    except Exception as exc:
        reason = (
            f"torch-pruning could not build a dependency graph ({type(exc).__name__}: {exc!s:.80})"
        )
        return [replace(u, prune_reason=reason) if u in layer_units else u for u in units]
    name_of = {id(m): n for n, m in model.named_modules()}
    layer_names = {u.name for u in layer_units}
    updates: dict[str, dict[str, Any]] = {}  # unit name -> Unit fields to change
    assigned: set[str] = set()
    for unit in layer_units:
        if unit.name in assigned:
            continue
        mod = model.get_submodule(unit.name)
        try:
            group = graph.get_pruning_group(mod, _out_channels_fn(mod), idxs=[0])
        except Exception as exc:
            updates[unit.name] = {"prune_reason": f"no pruning group ({exc!s:.80})"}
            continue
        members: list[str] = []
        for item in group:
            dep = item.dep
            target = name_of.get(id(dep.target.module))
            if (
                target is not None
                and target in layer_names
                and "out_channels" in getattr(dep.handler, "__name__", str(dep.handler))
            ):
                members.append(target)
        members = sorted(set(members) | {unit.name}, key=lambda n: trace.order.index(n))
        rep = members[0] if members[0] not in assigned else unit.name
        for member in members:
            assigned.add(member)
            if member != rep:
                updates[member] = {"coupled_to": rep}
        updates[rep] = {"prune_group": tuple(members)}
        failure = _trial_prune(model, example_input, rep, trace.model_output_shape)
        if failure:
            updates[rep]["prune_reason"] = failure
    return [replace(u, **updates[u.name]) if u.name in updates else u for u in units]


def _trial_prune(
    model: nn.Module, example_input: Inputs, name: str, output_shape: tuple[int, ...]
) -> str | None:
    """Remove one channel of ``name``'s group on a copy; why that fails, or ``None``."""
    trial = copy.deepcopy(model)
    try:
        graph = _build_graph(trial, example_input)
        mod = trial.get_submodule(name)
        group = graph.get_pruning_group(mod, _out_channels_fn(mod), idxs=[0])
        if not graph.check_pruning_group(group):
            return "too few channels to prune"
        group.prune()
        with torch.no_grad():
            out = call_model(trial, example_input)
    except Exception as exc:
        return f"removing a channel breaks the model ({type(exc).__name__}: {exc!s:.100})"
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else ()
    if shape != output_shape:
        return (
            "feeds the model output: pruning changes its shape "
            f"{list(output_shape)} → {list(shape)}"
        )
    return None
