"""Export: each CPU format round-trips to the reported figures, the report says what export.json
says, and a failed or refused export leaves nothing half-written."""

from __future__ import annotations

import json
import os
from pathlib import Path

import onnx
import pytest
import torch

from envs.workloads import DataSplit
from runners import get_runtime
from runners.base import RuntimeUnavailableError
from runners.build import BuildConfig, Subject
from runners.evaluate import EvalConfig
from runners.export import (
    EXPORT_FILE,
    ExportError,
    export_candidate,
    load_torch_export,
)
from runners.onnxruntime import _open_session
from runners.recovery import RecoveryConfig
from search_spaces import Strategy
from search_spaces.actions import with_everywhere
from search_spaces.actions.dynamic_skip.model import DynamicSkipModel
from search_spaces.actions.dynamic_skip.training import GateTrainConfig
from search_spaces.errors import StrategyError

from models import QUICK_LATENCY, self_labelled_subject

FAST = EvalConfig(latency=QUICK_LATENCY, build=BuildConfig(bn_batches=1))
RECOVERY = RecoveryConfig(steps=4, batch_size=32)


@pytest.fixture(scope="module")
def subject() -> Subject:
    return self_labelled_subject("resnet", samples=160, train=128)


@pytest.fixture(scope="module")
def strategy(subject: Subject) -> Strategy:
    return Strategy({u.name: {"prune": 0.5} for u in subject.units if u.allows("prune")})


def _ort_accuracy(path: Path, split: DataSplit) -> float:
    session = _open_session(path, 1, ["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    out = session.run(None, {name: split.inputs.numpy()})[0]
    return float((out.argmax(1) == split.targets.numpy()).mean() * 100)


@pytest.mark.parametrize("fmt", ["onnx", "onnx-int8"])
def test_onnx_export_reevaluates_to_the_reported_accuracy(subject, strategy, fmt, tmp_path):
    out = tmp_path / "export"

    exported = export_candidate(
        subject, strategy, fmt, out, config=FAST, recovery=RECOVERY, source={"search": "t"}
    )

    saved = json.loads((out / EXPORT_FILE).read_text())
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["model.onnx", "strategy.json", "report.md", EXPORT_FILE]
    )
    reported = saved["summary"]["accuracy"]
    assert abs(_ort_accuracy(out / "model.onnx", subject.workload.eval) - reported) <= 0.5
    assert saved["summary"]["speedup"] == pytest.approx(exported.speedup)
    assert saved["candidate"]["info"]["recovery"]["steps"] == RECOVERY.steps
    assert Strategy.load(out / "strategy.json") == exported.strategy
    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert ("QuantizeLinear" in ops) == (fmt == "onnx-int8")


def test_torch_export_loads_weights_only_and_matches_the_reported_accuracy(
    subject, strategy, tmp_path
):
    out = tmp_path / "export"
    export_candidate(subject, strategy, "torch", out, config=FAST, recovery=RECOVERY)

    model = load_torch_export(out, subject)

    torch.load(out / "model.pt", weights_only=True)  # no pickled code needed
    reported = json.loads((out / EXPORT_FILE).read_text())["summary"]["accuracy"]
    with torch.no_grad():
        preds = model(subject.workload.eval.inputs).argmax(1)
    accuracy = float((preds == subject.workload.eval.targets).float().mean() * 100)
    assert abs(accuracy - reported) <= 0.5
    pruned = sum(p.numel() for p in model.parameters())
    assert pruned < sum(p.numel() for p in subject.model.parameters())


def test_report_states_the_figures_of_export_json(subject, strategy, tmp_path):
    out = tmp_path / "export"
    exported = export_candidate(subject, strategy, "onnx", out, config=FAST, recovery=RECOVERY)

    report = (out / "report.md").read_text()

    c, b = exported.candidate, exported.baseline
    assert f"| accuracy % | {b.accuracy:.2f} | {c.accuracy:.2f} |" in report
    assert (
        f"| latency median ms | {b.latency.median_ms:.3f} | {c.latency.median_ms:.3f} |" in report
    )
    assert f"| latency p90 ms | {b.latency.p90_ms:.3f} | {c.latency.p90_ms:.3f} |" in report
    assert f"**{exported.speedup:.2f}x faster**" in report
    assert "4 distillation steps" in report and "onnxruntime-cpu" in report


def test_int8_everywhere_overrides_unit_precisions_and_keeps_structure() -> None:
    s = Strategy({"a": {"prune": 0.5, "precision": "fp32"}, "b": {"precision": "fp32"}})
    assert with_everywhere(s, "precision", "int8").to_dict()["units"] == {
        "*": {"precision": "int8"},
        "a": {"prune": 0.5},
    }


def test_tensorrt_without_a_gpu_fails_clearly_and_writes_nothing(subject, strategy, tmp_path):
    if get_runtime("tensorrt").unavailable_reason() is None:
        pytest.skip("TensorRT can run here; the refusal path is for machines without it")
    out = tmp_path / "export"
    with pytest.raises(RuntimeUnavailableError, match="--format tensorrt needs"):
        export_candidate(subject, strategy, "tensorrt", out, config=FAST, recovery=RECOVERY)
    assert list(tmp_path.iterdir()) == []


def test_a_failure_mid_export_leaves_no_partial_output(subject, strategy, tmp_path, monkeypatch):
    import runners.export as export_module

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export_module, "_write_model", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        export_candidate(
            subject, strategy, "onnx", tmp_path / "export", config=FAST, recovery=RECOVERY
        )
    assert list(tmp_path.iterdir()) == []


def test_a_non_empty_out_or_a_bad_strategy_is_refused_before_any_work(subject, strategy, tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not an empty directory"):
        export_candidate(subject, strategy, "onnx", out, config=FAST, recovery=RECOVERY)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]

    with pytest.raises(StrategyError):
        export_candidate(
            subject,
            Strategy({"nope": {"prune": 0.5}}),
            "onnx",
            tmp_path / "other",
            config=FAST,
            recovery=RECOVERY,
        )
    assert not (tmp_path / "other").exists()
    with pytest.raises(ExportError, match="unknown export format"):
        export_candidate(
            subject, strategy, "coreml", tmp_path / "x", config=FAST, recovery=RECOVERY
        )


GATED = EvalConfig(
    latency=QUICK_LATENCY,
    build=BuildConfig(
        bn_batches=1, gates=GateTrainConfig(warm_inputs=64, warm_epochs=4, reinforce_steps=4)
    ),
)


@pytest.fixture(scope="module")
def gated_strategy(subject: Subject) -> Strategy:
    blocks = [u.name for u in subject.units if u.allows("dynamic_skip")]
    return Strategy({b: {"dynamic_skip": 4.0} for b in blocks})


def test_onnx_export_of_a_dynamic_skip_candidate_carries_its_controller(
    subject, gated_strategy, tmp_path
):
    """The exported graph decides per input (If nodes, a second ``gates`` output) and its
    decisions and outputs are the reported ones."""
    out = tmp_path / "export"

    export_candidate(subject, gated_strategy, "onnx", out, config=GATED, recovery=RECOVERY)

    saved = json.loads((out / EXPORT_FILE).read_text())
    graph = onnx.load(str(out / "model.onnx")).graph
    gated = saved["candidate"]["info"]["dynamic"]["gated_blocks"]
    assert sum(n.op_type == "If" for n in graph.node) == gated
    session = _open_session(out / "model.onnx", 1, ["CPUExecutionProvider"])
    split = subject.workload.eval
    logits, gates = session.run(None, {session.get_inputs()[0].name: split.inputs.numpy()})
    assert gates.shape == (len(split.inputs), gated)
    assert float(gates.sum(1).mean()) == pytest.approx(
        saved["candidate"]["info"]["dynamic"]["executed_blocks"], abs=1e-6
    )
    accuracy = float((logits.argmax(1) == split.targets.numpy()).mean() * 100)
    assert accuracy == pytest.approx(saved["summary"]["accuracy"], abs=1e-9)


def test_torch_export_of_a_dynamic_skip_candidate_rebuilds_the_gated_model(
    subject, gated_strategy, tmp_path
):
    out = tmp_path / "export"
    exported = export_candidate(
        subject, gated_strategy, "torch", out, config=GATED, recovery=RECOVERY
    )

    model = load_torch_export(out, subject)

    assert isinstance(model, DynamicSkipModel)
    state = torch.load(out / "model.pt", weights_only=True)
    assert any(k.startswith("controller.") for k in state)
    split = subject.workload.eval
    with torch.no_grad():
        preds = model(split.inputs).argmax(1)
        executed = float(model.last_gates().sum(1).mean())
    accuracy = float((preds == split.targets).float().mean() * 100)
    assert accuracy == pytest.approx(exported.candidate.accuracy, abs=1e-9)
    assert executed == pytest.approx(exported.candidate.info["dynamic"]["executed_blocks"])


def test_an_export_removes_the_staging_folders_killed_exports_left(subject, strategy, tmp_path):
    """Issue 18 (B.15): SIGKILL during export left hidden ``.<out>.partial-*`` folders forever.
    The next export to the same place removes those whose process is gone, and only those."""
    import multiprocessing
    import socket

    from runners.export import sweep_stale_staging

    gone = multiprocessing.get_context("spawn").Process(target=int)
    gone.start()
    gone.join()
    host = socket.gethostname()
    dead = tmp_path / f".export.partial-{host}-{gone.pid}-abc123"
    live = tmp_path / f".export.partial-{host}-{os.getpid()}-def456"
    elsewhere = tmp_path / f".export.partial-otherhost-{gone.pid}-ghi789"
    for folder in (dead, live, elsewhere):
        (folder / "work").mkdir(parents=True)
    assert sweep_stale_staging(tmp_path / "other") == []  # another output's: not touched

    export_candidate(subject, strategy, "onnx", tmp_path / "export", config=FAST, recovery=RECOVERY)

    assert not dead.exists()
    assert live.exists() and elsewhere.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["export"]


def test_a_dynamic_skip_torch_export_is_logged_as_its_gated_onnx_graph_not_a_pickle(
    subject, gated_strategy, tmp_path
):
    """Issue 18 (A): the gated model does not trace with ``torch.export``; it was pickled.
    It is logged as the ONNX graph its own exporter writes (gates as ``If`` nodes)."""
    import mlflow.onnx
    from mlflow import MlflowClient
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    from agent.tracking import log_export

    out = tmp_path / "export"
    exported = export_candidate(
        subject, gated_strategy, "torch", out, config=GATED, recovery=RECOVERY
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    logged = log_export(
        exported,
        tracking_uri=uri,
        example_input=subject.workload.example_input,
        torch_model=load_torch_export(out, subject),
    )

    tags = MlflowClient(uri).get_run(logged["run_id"]).data.tags
    assert tags["layerpilot.torch_serialization"] == "onnx"
    with _use_tracking_uri(uri):
        proto = mlflow.onnx.load_model(logged["model_uri"])
    assert any(node.op_type == "If" for node in proto.graph.node)
    session = _open_session_of(proto)
    split = subject.workload.eval
    logits, _gates = session.run(None, {session.get_inputs()[0].name: split.inputs.numpy()})
    accuracy = float((logits.argmax(1) == split.targets.numpy()).mean() * 100)
    assert accuracy == pytest.approx(exported.candidate.accuracy, abs=1e-9)


def _open_session_of(proto: onnx.ModelProto):
    import onnxruntime as ort

    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
