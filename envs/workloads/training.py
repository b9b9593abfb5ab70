"""The one training loop the built-in workloads share: supervised classification from scratch.

It is deliberately small and deterministic: every random choice (initialisation, shuffling,
augmentation) is drawn under ``torch.random.fork_rng`` seeded from ``seed``, so training leaves
torch's global random state as it found it and the same seed gives the same weights on the same
torch build and thread count.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from envs.workloads.base import DataSplit, accuracy
from envs.workloads.inputs import call, take


@dataclass(frozen=True)
class TrainConfig:
    """How a built-in workload is trained (part of its cache key through the module source)."""

    epochs: int
    """Passes over the training split."""
    batch_size: int = 64
    """Samples per step; the last incomplete batch of each epoch is dropped."""
    optimizer: Literal["sgd", "adamw"] = "sgd"
    """``sgd`` (Nesterov, momentum 0.9) or ``adamw``."""
    lr: float = 0.1
    """Peak learning rate of the one-cycle schedule."""
    weight_decay: float = 5e-4
    """Weight decay (decoupled for AdamW)."""
    max_shift: int = 0
    """Random per-sample translation by up to this many pixels along every spatial dimension
    (zero-filled), as augmentation; 0 disables it."""
    label_smoothing: float = 0.0
    """Cross-entropy label smoothing."""
    grad_clip: float | None = None
    """Clip the global gradient norm to this value; ``None`` disables clipping."""

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"TrainConfig: epochs and batch_size must be >= 1, got {self}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(
                f"TrainConfig: optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}"
            )
        if self.lr <= 0 or self.weight_decay < 0 or self.max_shift < 0:
            raise ValueError(
                f"TrainConfig: lr must be > 0, weight_decay and max_shift >= 0: {self}"
            )


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each sample of ``x`` [N, C, *spatial] by up to ``max_shift`` per spatial axis.

    Vacated positions are zero; the shapes are unchanged.
    """
    if max_shift == 0:
        return x
    spatial = x.shape[2:]
    pad = [max_shift] * (2 * len(spatial))
    padded = F.pad(x, pad)
    offsets = torch.randint(0, 2 * max_shift + 1, (len(x), len(spatial)), generator=generator)
    out = torch.empty_like(x)
    for i, off in enumerate(offsets.tolist()):
        window = padded[i]
        for dim, (start, size) in enumerate(zip(off, spatial, strict=True), start=1):
            window = window.narrow(dim, start, size)
        out[i] = window
    return out


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, split: DataSplit, batch_size: int = 256) -> float:
    """Top-1 accuracy (percent) of ``model`` in eval mode on ``split``, computed in torch."""
    was_training = model.training
    model.eval()
    outputs = torch.cat([call(model, x) for x, _ in split.batches(batch_size)])
    model.train(was_training)
    return accuracy(outputs.numpy(), split.targets.numpy())


@dataclass(frozen=True)
class TrainMetrics:
    """What training a built-in workload produced; cached next to its weights."""

    eval_accuracy: float
    """Top-1 accuracy (percent) on the eval split, computed in torch right after training."""
    train_seconds: float
    """Wall-clock seconds of the training loop (excludes data generation)."""
    epochs: int
    """Epochs trained."""

    def to_dict(self) -> dict[str, float | int]:
        return {
            "eval_accuracy": self.eval_accuracy,
            "train_seconds": self.train_seconds,
            "epochs": self.epochs,
        }

    @classmethod
    def from_dict(cls, data: dict[str, float | int]) -> TrainMetrics:
        return cls(float(data["eval_accuracy"]), float(data["train_seconds"]), int(data["epochs"]))


def train_classifier(
    make_model: Callable[[], nn.Module],
    train: DataSplit,
    eval: DataSplit,
    config: TrainConfig,
    *,
    seed: int,
    progress: Callable[[str], None] | None = None,
    label: str = "model",
) -> tuple[nn.Module, TrainMetrics]:
    """Build a model with ``make_model`` and train it from scratch on ``train``.

    The model is created inside the seeded scope, so its initialisation is part of what ``seed``
    fixes. Torch's global random state is restored on return.

    Args:
        make_model: Builds the untrained model (called once, under the seeded RNG).
        train: Training split (class-index targets).
        eval: Held-out split, only used for the final accuracy.
        config: Optimiser, schedule and augmentation.
        seed: Seeds initialisation, shuffling and augmentation.
        progress: Called with one line per epoch, e.g. for a CLI status line.
        label: Name used in progress lines.

    Returns:
        The trained model in eval mode, and its metrics.
    """
    if len(train) < config.batch_size:
        raise ValueError(
            f"{label}: {len(train)} training samples is fewer than one batch of "
            f"{config.batch_size}; lower TrainConfig.batch_size"
        )
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = make_model()
        generator = torch.Generator().manual_seed(seed)
        steps_per_epoch = len(train) // config.batch_size
        optimizer: torch.optim.Optimizer
        if config.optimizer == "sgd":
            optimizer = torch.optim.SGD(
                model.parameters(),
                lr=config.lr,
                momentum=0.9,
                nesterov=True,
                weight_decay=config.weight_decay,
            )
        else:
            optimizer = torch.optim.AdamW(
                model.parameters(), lr=config.lr, weight_decay=config.weight_decay
            )
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch
        )
        model.train()
        for epoch in range(config.epochs):
            order = torch.randperm(len(train), generator=generator)
            total_loss = 0.0
            for step in range(steps_per_epoch):
                idx = order[step * config.batch_size : (step + 1) * config.batch_size]
                x = take(train.inputs, idx)
                if isinstance(x, torch.Tensor) and x.is_floating_point():
                    x = random_shift(x, config.max_shift, generator)
                loss = F.cross_entropy(
                    call(model, x), train.targets[idx], label_smoothing=config.label_smoothing
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                schedule.step()
                total_loss += loss.item()
            mean_loss = total_loss / steps_per_epoch
            if not math.isfinite(mean_loss):
                raise FloatingPointError(
                    f"{label}: training diverged (loss {mean_loss}) in epoch {epoch + 1}; "
                    "lower TrainConfig.lr"
                )
            if progress is not None:
                progress(
                    f"training {label}: epoch {epoch + 1}/{config.epochs}, loss {mean_loss:.3f}"
                )
    model.eval()
    seconds = time.perf_counter() - start
    return model, TrainMetrics(evaluate_accuracy(model, eval), seconds, config.epochs)
