"""Static costs of a model: FLOPs (total and per module) and parameters.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode``: it counts the matrix work —
convolutions, ``mm``/``addmm``/``bmm`` and attention — as 2 × multiply-accumulates, and **not**
elementwise ops (activations, norms, adds, pooling). That is the work int8/fp16 kernels speed
up, which is what the counts are for: the ideal cost of a strategy weights each module's FLOPs
by its precision (see ``runners.evaluate``).

Example:
    >>> count_flops(nn.Linear(4, 2), torch.randn(1, 4))
    16
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from envs.workloads.inputs import Inputs, call, take


def _flop_counter() -> Any:
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def cpu_sdpa(query: Any, key: Any, value: Any, *_args: Any, **_kwargs: Any) -> int:
        return int(sdpa_flop_count(query, key, value))

    # On CPU, scaled_dot_product_attention dispatches to a kernel the counter has no formula
    # for; count it like the GPU flash/efficient kernels (the two attention matmuls).
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_sdpa}
    return FlopCounterMode(display=False, depth=None, custom_mapping=mapping)  # type: ignore[arg-type]


def _run_counted(model: nn.Module, example_input: Inputs) -> Any:
    counter = _flop_counter()
    # The fused nn.TransformerEncoderLayer / MultiheadAttention fast path runs as one opaque op
    # that the counter would miss; the regular path runs the same matmuls, countably.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), counter:
            call(model, take(example_input, slice(0, 1)))
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return counter


def count_flops(model: nn.Module, example_input: Inputs) -> int:
    """FLOPs of one batch-1 forward (2 × MACs of convs/matmuls/attention; no elementwise ops).

    Args:
        model: The model (eval mode, so BatchNorm/dropout behave as deployed).
        example_input: An input (tensor, tuple or dict of tensors); only its first sample is
            run.
    """
    return int(_run_counted(model, example_input).get_total_flops())


def flops_by_module(model: nn.Module, example_input: Inputs) -> dict[str, int]:
    """FLOPs of one batch-1 forward per module path, each *inclusive* of its submodules.

    ``""`` is the whole model. Only modules that did counted work appear. To weight work by
    precision, sum over leaf modules (no children) and treat ``"" - sum(leaves)`` as work done
    in parents' own ``forward`` (e.g. attention score matmuls).

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> flops_by_module(net, torch.randn(1, 4))
        {'': 96, '0': 64, '2': 32}
    """
    counts = _run_counted(model, example_input).get_flop_counts()
    result: dict[str, int] = {}
    for key, per_op in counts.items():
        total = int(sum(per_op.values()))
        if key == "Global":
            result[""] = total
            continue
        _, _, path = key.partition(".")  # keys are "<RootClass>" or "<RootClass>.<path>"
        result[path] = total
    return dict(sorted(result.items()))


def count_params(model: nn.Module) -> int:
    """Number of parameters (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters())


def format_count(n: float) -> str:
    """A count for people: ``323.55M``, ``1.08M``, ``512``."""
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"
