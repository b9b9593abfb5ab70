"""A model's inputs: one tensor, a tuple of tensors or a dict of named tensors, of any dtype.

Every consumer of a workload's inputs (tracing, FLOP counting, ONNX export, ONNX Runtime feeds,
latency, int8 calibration, BatchNorm re-estimation, fine-tuning) goes through these helpers
instead of assuming one float32 tensor. The batch is dimension 0 of every tensor.

The names a runtime sees (:func:`input_names`) are ``"input"`` for a single tensor (as before),
``"input_0", "input_1", ...`` for a tuple, and the keys for a dict.

Example:
    >>> import torch
    >>> x = {"input_ids": torch.zeros(4, 16, dtype=torch.long),
    ...      "attention_mask": torch.ones(4, 16, dtype=torch.bool)}
    >>> batch_size(x), input_names(x)
    (4, ['input_ids', 'attention_mask'])
    >>> batch_size(take(x, slice(0, 1)))
    1
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

import numpy as np
import torch
from torch import nn

Inputs: TypeAlias = torch.Tensor | tuple[torch.Tensor, ...] | dict[str, torch.Tensor]
"""What a model is called with: ``model(x)``, ``model(*x)`` or ``model(**x)``."""
Feed: TypeAlias = dict[str, np.ndarray]
"""Numpy arrays by input name (:func:`input_names`), dtypes kept: what a runtime is fed."""

SINGLE_NAME = "input"
"""The name of a single-tensor input (the ONNX graph input of every built-in workload)."""

_UNFEEDABLE = (torch.complex32, torch.complex64, torch.complex128)


def named(x: Inputs) -> list[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` pairs of ``x`` in call order.

    Raises:
        TypeError: ``x`` is not a tensor, a tuple of tensors or a dict of tensors.
    """
    if isinstance(x, torch.Tensor):
        return [(SINGLE_NAME, x)]
    if isinstance(x, tuple | list):
        pairs = [(f"input_{i}", t) for i, t in enumerate(x)]
    elif isinstance(x, Mapping):
        pairs = list(x.items())
        if bad := [k for k, _ in pairs if not isinstance(k, str)]:
            raise TypeError(f"input keys must be strings, got {bad!r}")
    else:
        raise TypeError(
            f"inputs must be a tensor, a tuple of tensors or a dict of tensors, got {type(x)}"
        )
    if not pairs:
        raise ValueError("inputs hold no tensor")
    for name, t in pairs:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"input {name!r} must be a torch.Tensor, got {type(t)}")
    return pairs


def input_names(x: Inputs) -> list[str]:
    """The names a runtime sees, in call order (see the module docstring)."""
    return [name for name, _ in named(x)]


def _rebuild(x: Inputs, tensors: Sequence[torch.Tensor]) -> Inputs:
    """``tensors`` (in call order) put back into the structure of ``x``."""
    if isinstance(x, torch.Tensor):
        return tensors[0]
    if isinstance(x, tuple | list):
        return tuple(tensors)
    return dict(zip(x.keys(), tensors, strict=True))


def batch_size(x: Inputs) -> int:
    """The batch size (dimension 0) shared by every tensor of ``x``.

    Raises:
        ValueError: The tensors disagree (the message names them), or one is a scalar.
    """
    sizes: dict[str, int] = {}
    for name, t in named(x):
        if t.dim() == 0:
            raise ValueError(f"input {name!r} is a scalar; every input needs a batch dimension")
        sizes[name] = int(t.shape[0])
    if len(set(sizes.values())) > 1:
        first = next(iter(sizes))
        odd = next(n for n, s in sizes.items() if s != sizes[first])
        raise ValueError(
            f"input {odd!r} has batch size {sizes[odd]} but input {first!r} has "
            f"{sizes[first]}; every input of a split must have the same batch size"
        )
    return next(iter(sizes.values()))


def take(x: Inputs, index: slice | torch.Tensor | Sequence[int]) -> Inputs:
    """The samples ``index`` (a slice or indices) of every tensor of ``x``."""
    return _rebuild(x, [t[index] for _, t in named(x)])


def repeat(x: Inputs, n: int) -> Inputs:
    """The first sample of ``x`` repeated ``n`` times along the batch, contiguous."""
    return _rebuild(x, [t[:1].repeat(n, *([1] * (t.dim() - 1))).contiguous() for _, t in named(x)])


def to(x: Inputs, device: str | torch.device) -> Inputs:
    """``x`` with every tensor moved to ``device`` (dtypes kept)."""
    return _rebuild(x, [t.to(device) for _, t in named(x)])


def detach(x: Inputs) -> Inputs:
    """``x`` detached and on CPU (what export and feeds start from)."""
    return _rebuild(x, [t.detach().cpu() for _, t in named(x)])


def call(model: nn.Module | Any, x: Inputs) -> Any:
    """``model(x)``, ``model(*x)`` or ``model(**x)``, by the structure of ``x``."""
    if isinstance(x, torch.Tensor):
        return model(x)
    if isinstance(x, tuple | list):
        return model(*x)
    return model(**x)


def export_args(x: Inputs) -> tuple[tuple[Any, ...], dict[str, Any] | None]:
    """``(args, kwargs)`` for ``torch.onnx.export`` (a dict becomes keyword arguments)."""
    x = detach(x)
    if isinstance(x, torch.Tensor):
        return (x,), None
    if isinstance(x, tuple | list):
        return tuple(x), None
    return (), dict(x)


def to_feed(x: Inputs) -> Feed:
    """Contiguous numpy arrays by input name, dtypes kept (a bool mask stays bool)."""
    check_feedable(x)
    return {name: np.ascontiguousarray(t.detach().cpu().numpy()) for name, t in named(x)}


def from_feed(example: Inputs, feed: Mapping[str, np.ndarray] | np.ndarray) -> Inputs:
    """A feed (or one array, for a single-tensor input) back as tensors shaped like ``example``."""
    if isinstance(feed, np.ndarray):
        feed = {SINGLE_NAME: feed}
    names = input_names(example)
    if missing := [n for n in names if n not in feed]:
        raise ValueError(f"input {missing[0]!r} is missing from the feed (it has {list(feed)})")
    return _rebuild(example, [torch.from_numpy(np.ascontiguousarray(feed[n])) for n in names])


def check_feedable(x: Inputs) -> None:
    """Raise ``TypeError`` naming the input whose dtype ONNX Runtime cannot be fed (complex)."""
    for name, t in named(x):
        if t.dtype in _UNFEEDABLE:
            raise TypeError(
                f"input {name!r} has dtype {t.dtype}, which ONNX export and ONNX Runtime cannot "
                "take; feed real tensors (e.g. split a complex tensor into real and imaginary)"
            )


def _kind(x: Inputs) -> str:
    if isinstance(x, torch.Tensor):
        return "tensor"
    return "dict" if isinstance(x, Mapping) else "tuple"


def check_like(x: Inputs, example: Inputs, what: str) -> None:
    """Check that ``x`` has ``example``'s structure, names, per-sample shapes and dtypes.

    Args:
        x: Inputs of a split (any batch size).
        example: The workload's example input.
        what: Who ``x`` is, for the message (``"eval split"``).

    Raises:
        ValueError: A missing or extra input, a batch-size mismatch or a shape mismatch; the
            message names the input.
        TypeError: A different structure or dtype, or a dtype the runtime cannot feed.
    """
    check_feedable(example)
    ours, theirs = dict(named(x)), dict(named(example))
    if _kind(x) != _kind(example):
        raise TypeError(
            f"{what}: inputs are a {_kind(x)} but the example input is a {_kind(example)}"
        )
    if missing := [n for n in theirs if n not in ours]:
        raise ValueError(
            f"{what}: input {missing[0]!r} of the example input is missing (it has {list(ours)})"
        )
    if extra := [n for n in ours if n not in theirs]:
        raise ValueError(f"{what}: input {extra[0]!r} is not in the example input")
    batch_size(x)
    for name, t in theirs.items():
        mine = ours[name]
        if tuple(mine.shape[1:]) != tuple(t.shape[1:]):
            raise ValueError(
                f"{what}: input {name!r} has per-sample shape {tuple(mine.shape[1:])} but the "
                f"example input's is {tuple(t.shape[1:])}"
            )
        if mine.dtype != t.dtype:
            raise TypeError(
                f"{what}: input {name!r} has dtype {mine.dtype} but the example input's is "
                f"{t.dtype}"
            )


def input_shape(x: Inputs) -> list[int] | dict[str, list[int]]:
    """Shapes for people (``layerpilot workloads``): a list for a single tensor, as before, else
    a shape per input name."""
    if isinstance(x, torch.Tensor):
        return list(x.shape)
    return {name: list(t.shape) for name, t in named(x)}
