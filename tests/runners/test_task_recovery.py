"""Recovery and drops that follow the task: an embedding model recovers by feature matching, a
workload's own loss is the one used, and a metric where lower is better counts a worse model as
a positive drop everywhere the drop is read."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from envs.workloads.base import DataSplit, Workload
from envs.workloads.inputs import call
from runners.build import BuildConfig, Subject
from runners.evaluate import EvalConfig, evaluate, measure
from runners.recovery import RecoveryConfig, feature_loss, kd_loss, task_loss
from search_spaces import Strategy

from models import QUICK_LATENCY


def cosine(outputs: np.ndarray, targets: np.ndarray) -> float:
    num = (outputs * targets).sum(1)
    den = np.linalg.norm(outputs, axis=1) * np.linalg.norm(targets, axis=1) + 1e-12
    return float(100.0 * (num / den).mean())


def mse(outputs: np.ndarray, targets: np.ndarray) -> float:
    return float(((outputs - targets) ** 2).mean())


def _encoder() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32)
    ).eval()


def _subject(metric, higher_is_better: bool = True, loss=None, dims: int = 32) -> Subject:
    """The encoder judged against its own outputs (an embedding, or a regression head)."""
    model = _encoder() if dims == 32 else nn.Sequential(_encoder(), nn.Linear(32, dims)).eval()
    x = torch.randn(512, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = call(model, x)
    workload = Workload(
        "embed",
        model,
        x[:1],
        DataSplit(x[:384], y[:384]),
        DataSplit(x[384:], y[384:]),
        metric=metric,
        higher_is_better=higher_is_better,
        loss=loss,
    )
    return Subject.prepare(workload)


def pruned(subject: Subject) -> Strategy:
    """7/8 of every prunable layer removed."""
    return Strategy({u.name: {"prune": 0.875} for u in subject.units if u.allows("prune")})


def _config(steps: int) -> EvalConfig:
    return EvalConfig(
        latency=QUICK_LATENCY,
        build=BuildConfig(bn_batches=0, recovery=RecoveryConfig(steps=steps, lr=0.05)),
    )


def test_the_loss_follows_the_targets() -> None:
    config = RecoveryConfig(steps=1)
    scores, labels = torch.randn(8, 5), torch.randint(0, 5, (8,))
    assert task_loss(labels, config)(scores, scores, labels) == kd_loss(
        scores, scores, labels, config
    )
    embeddings = torch.randn(8, 32)
    assert task_loss(embeddings, config)(embeddings, embeddings, embeddings) < 1e-6
    assert feature_loss(2 * embeddings, embeddings) > 0.5  # the scale counts, not only direction
    per_token = torch.randn(2, 7, 5)
    assert torch.isfinite(kd_loss(per_token, per_token, torch.randint(0, 5, (2, 7)), config))


def test_an_embedding_model_recovers_its_cosine_by_feature_matching() -> None:
    """Feature matching brings the embeddings back further than the classification loss
    (soft targets over the embedding's coordinates, what recovery used for every task)."""
    config = RecoveryConfig(steps=60, lr=0.05)

    def as_classes(student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor):
        t = config.temperature
        soft = F.kl_div(
            F.log_softmax(student / t, dim=1),
            F.log_softmax(teacher / t, dim=1),
            reduction="batchmean",
            log_target=True,
        )
        return config.alpha * t**2 * soft + (1 - config.alpha) * F.cross_entropy(student, targets)

    subject = _subject(cosine)
    before = measure(subject, pruned(subject), _config(0)).accuracy
    after = measure(subject, pruned(subject), _config(60)).accuracy
    classes = _subject(cosine, loss=as_classes)
    after_classes = measure(classes, pruned(classes), _config(60)).accuracy

    assert before < 90.0  # pruning 7/8 of two layers bends the embeddings
    assert after > before + 10.0
    assert after > after_classes + 3.0  # measured: 83.5 against 77.8


def test_the_workloads_own_loss_is_the_one_recovery_uses() -> None:
    calls: list[tuple[int, ...]] = []

    def loss(student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(student.shape))
        return (student - teacher).abs().mean()

    subject = _subject(cosine, loss=loss)
    measure(subject, pruned(subject), _config(5))

    assert len(calls) == 5 and calls[0][1] == 32


def test_a_metric_where_lower_is_better_makes_a_worse_model_a_positive_drop() -> None:
    subject = _subject(mse, higher_is_better=False, dims=4)

    result = evaluate(subject, pruned(subject), _config(0))

    assert result.accuracy > result.baseline_accuracy  # the error grew
    assert result.accuracy_drop == pytest.approx(result.accuracy - result.baseline_accuracy)
    assert result.accuracy_drop > 0
