"""The `Workload` value: a trained model plus the data and metric it is judged by.

Inputs may be one tensor, a tuple or a dict of tensors of any dtype (`envs.workloads.inputs`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from envs.workloads.inputs import Inputs, batch_size, check_like, take

Metric = Callable[[np.ndarray, np.ndarray], float]
"""``metric(outputs, targets) -> float``: outputs are the model's raw outputs on a split."""

DistillLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss(student_outputs, teacher_outputs, targets) -> scalar``: a recovery fine-tune's loss
on one batch (the teacher is the original model)."""


def accuracy(outputs: np.ndarray, targets: np.ndarray) -> float:
    """Top-1 accuracy in percent (0-100) of scores ``outputs`` [N, C] against ``targets`` [N]."""
    if len(targets) == 0:
        raise ValueError("accuracy of an empty split is undefined")
    return float((np.asarray(outputs).argmax(axis=1) == np.asarray(targets)).mean() * 100.0)


@dataclass(frozen=True)
class DataSplit:
    """Inputs and targets of one split, as tensors with the batch on dimension 0."""

    inputs: Inputs
    """Model inputs: a tensor ``[N, ...]``, or a tuple / dict of tensors that each have the
    batch on dimension 0, of any dtype (token ids, masks)."""
    targets: torch.Tensor
    """Targets, ``[N, ...]`` (class indices for classification)."""

    def __post_init__(self) -> None:
        n = batch_size(self.inputs)
        if n != len(self.targets):
            raise ValueError(f"DataSplit: {n} inputs but {len(self.targets)} targets")

    def __len__(self) -> int:
        return batch_size(self.inputs)

    def head(self, n: int) -> DataSplit:
        """The first ``n`` samples (the splits are shuffled once, deterministically)."""
        return DataSplit(take(self.inputs, slice(0, n)), self.targets[:n])

    def batches(self, size: int) -> Iterator[tuple[Inputs, torch.Tensor]]:
        """Consecutive ``(inputs, targets)`` batches of at most ``size`` samples, in order."""
        for start in range(0, len(self), size):
            end = start + size
            yield take(self.inputs, slice(start, end)), self.targets[start:end]


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
    example_input: Inputs
    """One input with batch size 1 (a tensor, tuple or dict of tensors, like the splits'):
    shapes, dtypes and names for tracing, ONNX export and latency measurement."""
    train: DataSplit
    """Training split: quantization calibration, BatchNorm re-estimation, fine-tuning."""
    eval: DataSplit
    """Held-out split on which ``metric`` is reported."""
    metric: Metric = accuracy
    """``metric(outputs, targets)``; the default is top-1 accuracy in percent."""
    higher_is_better: bool = True
    """Whether a larger ``metric`` is better (a drop is always counted as getting worse)."""
    loss: DistillLoss | None = None
    """The recovery fine-tune's loss, ``loss(student_out, teacher_out, targets)`` → a scalar
    tensor (None: chosen from the targets, `runners.recovery.task_loss`: class indices get
    soft-target distillation plus cross-entropy; anything else, e.g. embeddings or
    regression, feature matching to the original model's outputs)."""
    description: str = ""
    """One line for ``layerpilot workloads``."""
    info: dict[str, object] = field(default_factory=dict)
    """Free-form facts (training time, cache key, dataset sizes) shown to users."""

    def __post_init__(self) -> None:
        if not isinstance(self.model, nn.Module):
            raise TypeError(
                f"Workload {self.name!r}: model must be an nn.Module, got {type(self.model)}"
            )
        try:
            n = batch_size(self.example_input)
            if n != 1:
                raise ValueError(f"example_input must have batch size 1, got {n}")
            check_like(self.eval.inputs, self.example_input, "eval split")
            check_like(self.train.inputs, self.example_input, "train split")
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"Workload {self.name!r}: {exc}") from exc
        self.model.eval()
