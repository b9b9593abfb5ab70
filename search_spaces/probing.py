"""Running a model on its example input while units are discovered: the call rule, which
modules reach the output, and whether removing a head keeps the model working."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from search_spaces.heads import HeadLayout, keep_heads

if TYPE_CHECKING:
    from envs.workloads.inputs import Inputs  # search_spaces sits below envs: types only


def float_tensors(out: Any) -> list[torch.Tensor]:
    """The floating-point tensors in a model output (a tensor, a tuple, a dict, a
    ``ModelOutput``)."""
    if isinstance(out, torch.Tensor):
        return [out] if out.is_floating_point() else []
    if isinstance(out, dict):
        return [t for v in out.values() for t in float_tensors(v)]
    if isinstance(out, tuple | list):
        return [t for v in out for t in float_tensors(v)]
    return []


def dead_modules(model: nn.Module, example_input: Inputs) -> set[str]:
    """Modules with parameters none of which reaches the output (one backward pass). Empty
    when the output has no floating-point tensor to differentiate or the pass fails."""
    params = list(model.parameters())
    was = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
            p.grad = None
        with torch.enable_grad():
            out = call_model(model, example_input)
            outputs = [t for t in float_tensors(out) if t.requires_grad]
            if not outputs:
                return set()
            torch.autograd.backward([t.sum() for t in outputs])
        dead = set()
        for name, mod in model.named_modules():
            own = list(mod.parameters())
            if name and own and all(p.grad is None for p in own):
                dead.add(name)
        return dead
    except Exception:
        return set()
    finally:
        for p, flag in zip(params, was, strict=True):
            p.grad = None
            p.requires_grad_(flag)


def trial_heads(
    model: nn.Module,
    example_input: Inputs,
    layouts: list[HeadLayout],
    output_shape: tuple[int, ...],
) -> dict[str, str]:
    """Remove one head of every attention layout on a copy (one at a time if that fails);
    per attention unit, why the model breaks without a head."""
    candidates = [lay for lay in layouts if lay.heads > 1]
    if not candidates:
        return {}

    def trial(group: list[HeadLayout]) -> str | None:
        copy_ = copy.deepcopy(model)
        try:
            for lay in group:
                keep_heads(copy_, lay, list(range(1, lay.heads)))
            with torch.no_grad():
                out = call_model(copy_, example_input)
        except Exception as exc:
            return f"removing a head breaks the model ({type(exc).__name__}: {exc!s:.100})"
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else ()
        if shape != output_shape:
            return f"removing a head changes the output shape to {list(shape)}"
        return None

    if trial(candidates) is None:
        return {}
    return {lay.attention: why for lay in candidates if (why := trial([lay])) is not None}


def call_model(model: nn.Module, x: Inputs) -> Any:
    """``model(x)``, ``model(*x)`` or ``model(**x)``: the rule of
    ``envs.workloads.inputs.call`` (and of torch-pruning's tracer), kept here because
    ``search_spaces`` sits below ``envs``."""
    if isinstance(x, torch.Tensor):
        return model(x)
    if isinstance(x, tuple | list):
        return model(*x)
    return model(**x)


__all__ = ["call_model", "dead_modules", "float_tensors", "trial_heads"]
