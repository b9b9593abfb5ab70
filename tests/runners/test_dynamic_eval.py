"""A dynamic-skip candidate through the real path: build (controller training), ORT with If
nodes, latency over inputs, gate statistics, the env's action space and MLflow tracking."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from mlflow import MlflowClient

from agent.records import CandidateRecord
from agent.tracking import Tracker, default_tracking_uri
from envs.layer_env import EnvConfig, LayerEnv
from envs.reward import Score
from envs.workloads import DataSplit, Workload
from runners.build import BuildConfig, Subject, build_candidate
from runners.evaluate import EvalConfig, measure
from runners.job import Outcome
from runners.result import EvalResult, Measurement
from search_spaces import Strategy
from search_spaces.actions.dynamic_skip.model import DynamicSkipModel
from search_spaces.actions.dynamic_skip.training import GateTrainConfig
from search_spaces.space import DecisionSpace

from models import QUICK_LATENCY, make_model

FAST = EvalConfig(
    latency=QUICK_LATENCY,
    build=BuildConfig(
        bn_batches=1, gates=GateTrainConfig(warm_inputs=32, warm_epochs=4, reinforce_steps=4)
    ),
)


@pytest.fixture(scope="module")
def subject() -> Subject:
    model, x = make_model("resnet")
    g = torch.Generator().manual_seed(0)
    inputs = torch.randn(96, *x.shape[1:], generator=g)
    with torch.no_grad():
        targets = model(inputs).argmax(1)
    split = DataSplit(inputs, targets)
    return Subject.prepare(Workload("tiny-resnet", model, x, split.head(64), split))


@pytest.fixture(scope="module")
def measured(subject: Subject) -> tuple[EvalResult, Measurement, Measurement]:
    """``evaluate``'s result, and the candidate and baseline measurements it was made of."""
    blocks = [u.name for u in subject.units if u.allows("dynamic_skip")]
    strategy = Strategy({b: {"dynamic_skip": 4.0} for b in blocks})
    baseline = measure(subject, Strategy(), FAST)
    candidate = measure(subject, strategy, FAST)
    result = EvalResult.of(subject.workload.name, strategy, FAST.runtime, candidate, baseline)
    return result, candidate, baseline


@pytest.fixture(scope="module")
def result(measured) -> EvalResult:
    return measured[0]


def test_build_trains_the_controller_and_records_it(subject: Subject):
    blocks = [u.name for u in subject.units if u.allows("dynamic_skip")]
    strategy = Strategy({b: {"dynamic_skip": 1.0} for b in blocks})
    untrained = GateTrainConfig(warm_epochs=0, reinforce_steps=0)
    before = build_candidate(subject, strategy, BuildConfig(gates=untrained))

    candidate = build_candidate(subject, strategy, FAST.build)

    assert isinstance(candidate.model, DynamicSkipModel) and candidate.input_dependent
    assert candidate.notes["gate_training"]["steps"] == 8
    trained = candidate.model.controller.state_dict()
    untrained = before.model.controller.state_dict()
    assert any(not torch.equal(trained[k], untrained[k]) for k in trained)


def test_recovery_of_a_gated_backbone_runs_under_the_controllers_decisions(subject, monkeypatch):
    """The distillation runs after the controller learns, with its gates deciding (not forced
    open); only the backbone learns."""
    import runners.build as build
    from runners.recovery import RecoveryConfig, distill

    calls: list[dict[str, object]] = []

    def spy(student, teacher, train, config, loss=None):
        controller = {k: v.clone() for k, v in student.controller.state_dict().items()}
        backbone = {k: v.clone() for k, v in student.backbone.state_dict().items()}
        calls.append({"forced": student.state.force, "trained": controller_trained(student)})
        stats = distill(student, teacher, train, config, loss)
        after = student.state_dict()
        calls[-1]["controller_moved"] = any(
            not torch.equal(v, after[f"controller.{k}"]) for k, v in controller.items()
        )
        calls[-1]["backbone_moved"] = any(
            not torch.equal(v, after[f"backbone.{k}"]) for k, v in backbone.items()
        )
        return stats

    blocks = [u.name for u in subject.units if u.allows("dynamic_skip")]
    strategy = Strategy({b: {"dynamic_skip": 4.0} for b in blocks})
    untrained = build_candidate(
        subject, strategy, BuildConfig(gates=GateTrainConfig(warm_epochs=0, reinforce_steps=0))
    ).model.controller.state_dict()

    def controller_trained(model: DynamicSkipModel) -> bool:
        now = model.controller.state_dict()
        return any(not torch.equal(now[k], untrained[k]) for k in now)

    monkeypatch.setattr(build, "distill", spy)
    config = BuildConfig(
        bn_batches=1, gates=FAST.build.gates, recovery=RecoveryConfig(steps=4, batch_size=16)
    )
    candidate = build_candidate(subject, strategy, config)

    assert len(calls) == 1
    assert calls[0]["trained"] and calls[0]["forced"] is None
    assert calls[0]["backbone_moved"] and not calls[0]["controller_moved"]
    assert candidate.notes["recovery"]["steps"] == 4
    assert candidate.notes["gate_training"]["steps"] == 8


def test_dynamic_candidate_reports_gates_and_latency_over_inputs(measured, subject: Subject):
    result, candidate, baseline = measured
    data = result.to_dict()
    gated = len([u for u in subject.units if u.allows("dynamic_skip")])

    assert data["gated_blocks"] == gated
    assert 0.0 <= data["executed_blocks"] <= gated
    assert data["executed_share"] == pytest.approx(data["executed_blocks"] / gated)
    assert data["dynamic_alpha"] == 4.0
    assert candidate.latency.inputs == FAST.latency.inputs
    assert data["latency_ms"] == candidate.latency.input_mean_ms
    assert data["speedup"] == pytest.approx(
        baseline.latency.median_ms / candidate.latency.input_mean_ms
    )
    assert len(candidate.info["dynamic"]["per_block"]) == gated
    assert data["latency_input_median_ms"] == candidate.latency.input_median_ms


def test_dynamic_candidate_accuracy_matches_torch_eager(measured, subject: Subject):
    """The ORT (If-node) accuracy equals the eager model's on the same eval split."""
    result, measurement, _ = measured
    candidate = build_candidate(subject, result.strategy, FAST.build)
    with torch.no_grad():
        out = candidate.model(subject.workload.eval.inputs).numpy()
    eager = subject.workload.metric(out, subject.workload.eval.targets.numpy())
    assert measurement.accuracy == result.accuracy == pytest.approx(eager, abs=1e-9)


def test_dynamic_candidate_is_tracked_with_its_statistics(result, tmp_path):
    tracker = Tracker(default_tracking_uri(tmp_path), experiment="dynamic")
    tracker.start_search("s", {"agent": "ppo"}, {"name": "tiny"}, {"accuracy": 1.0}, tmp_path)
    outcome = Outcome(result.strategy, "ok", result=result.to_dict(), eval_seconds=1.0)

    run_id = tracker.log_candidate(CandidateRecord(0, outcome, reward=0.1, source="ppo"))

    metrics = MlflowClient(tracker.tracking_uri).get_run(run_id).data.metrics
    assert metrics["executed_blocks"] == pytest.approx(result.to_dict()["executed_blocks"])
    assert metrics["dynamic_alpha"] == 4.0
    assert math.isfinite(metrics["latency_input_median_ms"])


def test_env_offers_dynamic_skip_on_blocks_when_asked(subject: Subject):
    space = DecisionSpace(subject.units, actions=["dynamic_skip", "prune", "skip"])
    env = LayerEnv(
        EnvConfig(space, lambda s: Score(accuracy_drop=0.0, speedup=1.0, ideal_speedup=1.0))
    )
    check_env(env, skip_render_check=True)
    column = space.action_names.index("dynamic_skip")
    action = np.zeros(len(space.nvec), dtype=np.int64)
    action[column] = 2

    env.reset(seed=0)
    done = False
    while not done:
        _, _, done, _, info = env.step(action)

    strategy = Strategy.from_json(info["strategy"])
    gated = {u: a["dynamic_skip"] for u, a in strategy.units.items() if "dynamic_skip" in a}
    assert set(gated) == {u.name for u in subject.units if u.allows("dynamic_skip")}
    assert set(gated.values()) == {4.0}
