"""Distillation recovery: it moves a damaged student towards the teacher, deterministically, and
the build and cache keys carry it only when it is on."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from envs.workloads import DataSplit
from runners.build import BuildConfig, Subject, build_candidate
from runners.evaluate import EvalConfig
from runners.job import EvalSpec
from runners.recovery import RECOVERY_PRESETS, RecoveryConfig, distill, recovery_preset
from search_spaces import Strategy

from models import self_labelled_subject


@pytest.fixture(scope="module")
def subject() -> Subject:
    """A random-init tiny ResNet as the teacher (mechanics only: it predicts one class)."""
    return self_labelled_subject("resnet", samples=320, train=256)


def _pruned(subject: Subject) -> Strategy:
    return Strategy({u.name: {"prune": 0.5} for u in subject.units if u.allows("prune")})


def _kl(student: torch.nn.Module, teacher: torch.nn.Module, split: DataSplit) -> float:
    with torch.no_grad():
        s, t = student(split.inputs), teacher(split.inputs)
    return float(
        F.kl_div(F.log_softmax(s, 1), F.log_softmax(t, 1), reduction="batchmean", log_target=True)
    )


def test_short_recovery_brings_a_heavily_pruned_digits_resnet_back(workload_cache) -> None:
    from envs.workloads import get_workload
    from envs.workloads.training import evaluate_accuracy

    subject = Subject.prepare(get_workload("digits-resnet", cache_dir=workload_cache))
    strategy = Strategy({u.name: {"prune": 0.75} for u in subject.units if u.allows("prune")})
    student = build_candidate(subject, strategy, BuildConfig(bn_batches=4)).model
    held_out = subject.workload.eval
    kl_before, acc_before = (
        _kl(student, subject.model, held_out),
        evaluate_accuracy(student, held_out),
    )

    stats = distill(student, subject.model, subject.workload.train, recovery_preset("short"))

    assert stats.steps == 40 and stats.loss_last < stats.loss_first
    assert _kl(student, subject.model, held_out) < 0.5 * kl_before
    assert evaluate_accuracy(student, held_out) > acc_before + 30  # measured: 9 -> 82 %
    assert not student.training


def test_distill_is_deterministic_for_a_seed_and_leaves_the_global_rng_alone(
    subject: Subject,
) -> None:
    config = RecoveryConfig(steps=5, batch_size=32, max_shift=1)
    torch.manual_seed(123)
    expected = torch.rand(1)
    weights = []
    for _ in range(2):
        student = build_candidate(subject, _pruned(subject), BuildConfig(bn_batches=2)).model
        torch.manual_seed(123)
        distill(student, subject.model, subject.workload.train, config)
        weights.append(student.state_dict())
        assert torch.equal(torch.rand(1), expected)
    for key, value in weights[0].items():
        assert torch.equal(value, weights[1][key]), key


def test_zero_steps_change_nothing(subject: Subject) -> None:
    student = build_candidate(subject, _pruned(subject), BuildConfig(bn_batches=2)).model
    before = {k: v.clone() for k, v in student.state_dict().items()}
    stats = distill(student, subject.model, subject.workload.train, RecoveryConfig(steps=0))
    assert stats.steps == 0
    for key, value in student.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_build_candidate_recovers_structural_changes_only(subject: Subject) -> None:
    config = BuildConfig(bn_batches=2, recovery=RecoveryConfig(steps=3, batch_size=32))

    unchanged = build_candidate(subject, Strategy(), config)
    pruned = build_candidate(subject, _pruned(subject), config)

    x = subject.workload.eval.inputs
    with torch.no_grad():
        assert torch.equal(unchanged.model(x), subject.model(x))
    assert "recovery" not in unchanged.notes
    assert pruned.notes["recovery"]["steps"] == 3  # type: ignore[index]


def test_cache_scope_names_recovery_only_when_it_is_on() -> None:
    off = EvalSpec(workload="digits-resnet").cache_scope()
    on = EvalSpec(
        workload="digits-resnet",
        eval=EvalConfig(build=BuildConfig(recovery=recovery_preset("short"))),
    ).cache_scope()
    assert "recovery" not in off["build"]
    assert on["build"]["recovery"]["steps"] == RECOVERY_PRESETS["short"].steps
    assert {k: v for k, v in on["build"].items() if k != "recovery"} == off["build"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"steps": -1}, "steps"),
        ({"lr": 0.0}, "lr"),
        ({"temperature": 0.0}, "temperature"),
        ({"alpha": 1.5}, "alpha"),
    ],
)
def test_recovery_config_rejects_bad_values(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RecoveryConfig(**kwargs)  # type: ignore[arg-type]


def test_unknown_recovery_level_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="none, short, full"):
        recovery_preset("medium")
