"""Cheap accuracy recovery applied while a candidate is built.

Pruning and skipping shift the activation statistics that BatchNorm layers stored during
training; re-estimating them on a few calibration batches (no gradient steps) recovers much of
the lost accuracy for seconds of CPU time. A bounded knowledge-distillation fine-tune from the
original model (:func:`distill`) recovers the rest, at a cost of seconds to minutes.

Quantized units are calibrated *after* the fine-tune: the runtime calibrates the candidate it
is handed (:func:`runners.quantize.quantize_onnx`), so int8 scales always describe the
recovered weights. ``benchmarks/recovery.py`` measures what that leaves on the table (the int8
loss after recovery), which bounds what quantization-aware fine-tuning could win back.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from envs.workloads.base import DataSplit, DistillLoss
from envs.workloads.inputs import Inputs, call, take
from envs.workloads.inputs import batch_size as batch_of
from envs.workloads.training import random_shift

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@torch.no_grad()
def reestimate_batchnorm(
    model: nn.Module, inputs: Inputs, *, batch_size: int = 64, max_batches: int = 16
) -> int:
    """Recompute every BatchNorm's running mean/var from ``inputs``; return batches used.

    Uses a cumulative average (``momentum=None``) over at most ``max_batches`` batches, then
    restores each layer's momentum and puts the model back in eval mode. No weights change.
    """
    norms = [m for m in model.modules() if isinstance(m, _BN) and m.track_running_stats]
    n = batch_of(inputs)
    if not norms or n == 0:
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    used = 0
    try:
        for start in range(0, min(n, batch_size * max_batches), batch_size):
            call(model, take(inputs, slice(start, start + batch_size)))
            used += 1
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.eval()
    return used


@dataclass(frozen=True)
class RecoveryConfig:
    """A bounded knowledge-distillation fine-tune of a candidate (``steps=0`` turns it off).

    The loss follows the task (`task_loss`). For classification it is
    ``alpha · T² · KL(teacher_T ‖ student_T) + (1 − alpha) · CE(student, label)`` (Hinton et
    al.'s soft targets at temperature ``T``), the teacher being the original model; for other
    outputs, feature matching to the teacher's outputs; a workload may bring its own.
    SGD with Nesterov momentum and a cosine schedule, on the workload's train split, for a
    fixed number of steps, seeded: the same config gives the same weights.
    """

    steps: int = 0
    """Optimizer steps (0 = no fine-tune; the search's AMC-style fast proxy)."""
    batch_size: int = 64
    """Train-split samples per step (reshuffled every pass)."""
    lr: float = 0.01
    """Peak learning rate (cosine-decayed to 0 over ``steps``)."""
    weight_decay: float = 5e-4
    """SGD weight decay."""
    temperature: float = 4.0
    """Softmax temperature ``T`` of the soft targets."""
    alpha: float = 0.9
    """Weight of the soft-target term; ``1 − alpha`` weighs the hard-label cross-entropy."""
    max_shift: int = 0
    """Random translation augmentation, in samples/pixels per spatial axis (0 disables it; the
    teacher then runs once on the whole split instead of once per step)."""
    seed: int = 0
    """Seeds shuffling and augmentation."""

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.max_shift < 0:
            raise ValueError(
                f"RecoveryConfig: steps and max_shift must be >= 0, batch_size >= 1: {self}"
            )
        if not self.lr > 0 or self.weight_decay < 0 or not self.temperature > 0:
            raise ValueError(
                f"RecoveryConfig: lr and temperature must be > 0, weight_decay >= 0: {self}"
            )
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"RecoveryConfig: alpha must be in [0, 1], got {self.alpha}")

    @property
    def enabled(self) -> bool:
        return self.steps > 0


RECOVERY_PRESETS: dict[str, RecoveryConfig] = {
    "none": RecoveryConfig(steps=0),
    "short": RecoveryConfig(steps=40),
    "full": RecoveryConfig(steps=400),
}
"""The per-search recovery levels: ``none`` (fast proxy, BatchNorm re-estimation only),
``short`` (inside the search loop) and ``full`` (the final export). ``full`` is about 19 epochs
of digits' 1347 training images, 2.6 of MNIST-1D's 10 000 sequences."""


def recovery_preset(name: str) -> RecoveryConfig:
    """The named preset; the error lists the known names."""
    try:
        return RECOVERY_PRESETS[name]
    except KeyError:
        known = ", ".join(RECOVERY_PRESETS)
        raise ValueError(f"unknown recovery level {name!r}; choose one of {known}") from None


def fidelity_name(config: RecoveryConfig) -> str:
    """The preset name of ``config`` (its fidelity), or ``"<steps> steps"`` for a custom one.

    Example:
        >>> fidelity_name(RecoveryConfig(steps=40)), fidelity_name(RecoveryConfig(steps=7))
        ('short', '7 steps')
    """
    for name, preset in RECOVERY_PRESETS.items():
        if preset == config:
            return name
    return f"{config.steps} steps"


@dataclass(frozen=True)
class RecoveryStats:
    """What one distillation fine-tune did (kept in the candidate's notes)."""

    steps: int
    seconds: float
    loss_first: float
    """Mean loss over the first 10 % of steps."""
    loss_last: float
    """Mean loss over the last 10 % of steps."""


def distill(
    student: nn.Module,
    teacher: nn.Module,
    train: DataSplit,
    config: RecoveryConfig,
    loss: DistillLoss | None = None,
) -> RecoveryStats:
    """Fine-tune ``student`` in place towards ``teacher`` on ``train``; return what it did.

    Both models must map the same inputs to outputs of the same shape; ``loss`` (default
    `task_loss` of the train targets) compares them. The teacher is only run (eval mode,
    no gradients). The student ends in eval mode. Shuffling, augmentation and dropout are
    seeded by ``config.seed``; torch's global random state is restored on return.

    Raises:
        FloatingPointError: The loss became NaN/inf (the message says at which step).
    """
    if not config.enabled:
        return RecoveryStats(0, 0.0, math.nan, math.nan)
    start = time.perf_counter()
    teacher.eval()
    fixed_targets = None
    if config.max_shift == 0:
        with torch.no_grad():
            fixed_targets = torch.cat([call(teacher, x) for x, _ in train.batches(256)])
    loss_fn = loss if loss is not None else task_loss(train.targets, config)
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        params, lr=config.lr, momentum=0.9, nesterov=True, weight_decay=config.weight_decay
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.steps)
    losses: list[float] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)  # dropout draws from the global generator
        student.train()
        try:
            for step, (x, y, soft) in enumerate(_batches(train, teacher, fixed_targets, config)):
                value = loss_fn(call(student, x), soft, y)
                if not torch.isfinite(value):
                    raise FloatingPointError(
                        f"distillation diverged at step {step + 1}/{config.steps} "
                        f"(loss {value.item()}); lower RecoveryConfig.lr"
                    )
                optimizer.zero_grad(set_to_none=True)
                value.backward()
                optimizer.step()
                schedule.step()
                losses.append(value.item())
        finally:
            student.eval()
    tail = max(1, len(losses) // 10)
    return RecoveryStats(
        steps=config.steps,
        seconds=time.perf_counter() - start,
        loss_first=sum(losses[:tail]) / tail,
        loss_last=sum(losses[-tail:]) / tail,
    )


def _batches(
    train: DataSplit,
    teacher: nn.Module,
    fixed_targets: torch.Tensor | None,
    config: RecoveryConfig,
) -> Iterator[tuple[Inputs, torch.Tensor, torch.Tensor]]:
    """``config.steps`` (inputs, labels, teacher scores) batches, reshuffled every pass.

    The random shift augments a single floating tensor only (token ids or a tuple/dict of
    inputs have no spatial axes to shift)."""
    generator = torch.Generator().manual_seed(config.seed)
    size = min(config.batch_size, len(train))
    order, cursor = torch.randperm(len(train), generator=generator), 0
    for _ in range(config.steps):
        if cursor + size > len(order):
            order, cursor = torch.randperm(len(train), generator=generator), 0
        idx = order[cursor : cursor + size]
        cursor += size
        x = take(train.inputs, idx)
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            x = random_shift(x, config.max_shift, generator)
        if fixed_targets is not None:
            soft = fixed_targets[idx]
        else:
            with torch.no_grad():  # never yield inside: grad mode is global, not per frame
                soft = call(teacher, x)
        yield x, train.targets[idx], soft


def task_loss(targets: torch.Tensor, config: RecoveryConfig) -> DistillLoss:
    """The distillation loss that fits the targets: integer class indices (one per sample, or
    per token) get `kd_loss`; anything else (embeddings, regression values) `feature_loss`."""
    if not targets.is_floating_point() and not targets.is_complex():
        return lambda student, teacher, labels: kd_loss(student, teacher, labels, config)
    return lambda student, teacher, _labels: feature_loss(student, teacher)


def kd_loss(
    logits: torch.Tensor, soft: torch.Tensor, labels: torch.Tensor, config: RecoveryConfig
) -> torch.Tensor:
    """Soft targets at temperature ``T`` plus hard-label cross-entropy: ``[N, C]`` scores with
    ``[N]`` labels, per token ``[N, T, C]`` with ``[N, T]``, or per pixel ``[N, C, H, W]``."""
    if logits.dim() > 2 and tuple(labels.shape) != tuple(logits.shape[:-1]):
        logits, soft = logits.movedim(1, -1), soft.movedim(1, -1)  # classes on axis 1
    classes = logits.shape[-1]
    logits, soft = logits.reshape(-1, classes), soft.reshape(-1, classes)
    labels = labels.reshape(-1)
    t = config.temperature
    kd = F.kl_div(
        F.log_softmax(logits / t, dim=1),
        F.log_softmax(soft / t, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    hard = F.cross_entropy(logits, labels)
    return config.alpha * t**2 * kd + (1 - config.alpha) * hard


def feature_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Feature matching to the teacher's outputs: the mean squared error relative to the
    teacher's mean square (scale-free, so one learning rate fits any output), plus
    ``1 − cosine`` per sample when a sample has more than one value (an embedding's direction
    is what a cosine metric reads)."""
    s, t = student.float().flatten(1), teacher.float().flatten(1)
    loss = F.mse_loss(s, t) / t.pow(2).mean().clamp_min(1e-12)
    if s.shape[1] > 1:
        loss = loss + (1.0 - F.cosine_similarity(s, t, dim=1)).mean()
    return loss
