"""The `Workload` value: a trained model plus the data and metric it is judged by."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

Metric = Callable[[np.ndarray, np.ndarray], float]
"""``metric(outputs, targets) -> float``: outputs are the model's raw outputs on a split."""


def accuracy(outputs: np.ndarray, targets: np.ndarray) -> float:
    """Top-1 accuracy in percent (0-100) of scores ``outputs`` [N, C] against ``targets`` [N]."""
    if len(targets) == 0:
        raise ValueError("accuracy of an empty split is undefined")
    return float((np.asarray(outputs).argmax(axis=1) == np.asarray(targets)).mean() * 100.0)


@dataclass(frozen=True)
class DataSplit:
    """Inputs and targets of one split, as tensors with the batch on dimension 0."""

    inputs: torch.Tensor
    """Model inputs, ``[N, ...]``, float32."""
    targets: torch.Tensor
    """Targets, ``[N, ...]`` (class indices for classification)."""

    def __post_init__(self) -> None:
        if len(self.inputs) != len(self.targets):
            raise ValueError(
                f"DataSplit: {len(self.inputs)} inputs but {len(self.targets)} targets"
            )

    def __len__(self) -> int:
        return len(self.inputs)

    def head(self, n: int) -> DataSplit:
        """The first ``n`` samples (the splits are shuffled once, deterministically)."""
        return DataSplit(self.inputs[:n], self.targets[:n])

    def batches(self, size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Consecutive ``(inputs, targets)`` batches of at most ``size`` samples, in order."""
        for start in range(0, len(self), size):
            yield self.inputs[start : start + size], self.targets[start : start + size]


@dataclass
class Workload:
    """A trained model and what it is judged on. This is the bring-your-own contract.

    A ``--model module:function`` callable takes no arguments and returns one of these.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).eval()
        >>> x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
        >>> wl = Workload("toy", model, x[:1], DataSplit(x, y), DataSplit(x, y))
        >>> wl.example_input.shape
        torch.Size([1, 4])
    """

    name: str
    """Short identifier, used in cache keys, MLflow and reports."""
    model: nn.Module
    """The trained model, in eval mode. Transforms never modify it (they work on a copy)."""
    example_input: torch.Tensor
    """One input with batch size 1; shapes for tracing, ONNX export and latency measurement."""
    train: DataSplit
    """Training split: quantization calibration, BatchNorm re-estimation, fine-tuning."""
    eval: DataSplit
    """Held-out split on which ``metric`` is reported."""
    metric: Metric = accuracy
    """``metric(outputs, targets)``; the default is top-1 accuracy in percent."""
    higher_is_better: bool = True
    """Whether a larger ``metric`` is better."""
    description: str = ""
    """One line for ``layerpilot workloads``."""
    info: dict[str, object] = field(default_factory=dict)
    """Free-form facts (training time, cache key, dataset sizes) shown to users."""

    def __post_init__(self) -> None:
        if not isinstance(self.model, nn.Module):
            raise TypeError(
                f"Workload {self.name!r}: model must be an nn.Module, got {type(self.model)}"
            )
        if self.example_input.shape[0] != 1:
            raise ValueError(
                f"Workload {self.name!r}: example_input must have batch size 1, "
                f"got shape {tuple(self.example_input.shape)}"
            )
        if self.example_input.shape[1:] != self.eval.inputs.shape[1:]:
            raise ValueError(
                f"Workload {self.name!r}: example_input shape "
                f"{tuple(self.example_input.shape[1:])} differs from eval inputs "
                f"{tuple(self.eval.inputs.shape[1:])}"
            )
        self.model.eval()
