"""Workloads whose inputs are a dict or a tuple of integer tensors, end to end on ONNX Runtime.

A token classifier (embedding, two Linears, masked mean-pool, head) called as
``model(input_ids=..., attention_mask=...)`` or ``model(ids, mask)``: the unchanged, int8 and
pruned strategies build, export, run with int64/bool feeds, calibrate and time.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from envs.workloads.base import DataSplit, Workload
from envs.workloads.inputs import Inputs, batch_size, call, take, to_feed
from runners.build import BuildConfig, Subject, build_candidate
from runners.evaluate import EvalConfig, evaluate, measure, measure_candidate
from runners.latency import measure_over_inputs
from runners.onnxruntime import OnnxRuntimeCPU
from runners.recovery import RecoveryConfig
from search_spaces import Strategy

from models import QUICK_LATENCY

FAST = EvalConfig(latency=QUICK_LATENCY, build=BuildConfig(bn_batches=2, calibration_samples=32))
VOCAB, LENGTH, CLASSES = 50, 16, 4


class TokenClassifier(nn.Module):
    """Embedding → Linear → BatchNorm → ReLU → Linear, masked mean over tokens, a class head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 32)
        self.fc1 = nn.Linear(32, 64)
        self.norm = nn.BatchNorm1d(LENGTH)
        self.fc2 = nn.Linear(64, 32)
        self.head = nn.Linear(32, CLASSES)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.fc2(torch.relu(self.norm(self.fc1(self.embed(input_ids)))))
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return self.head((h * m).sum(1) / m.sum(1).clamp(min=1.0))


def _tokens(n: int, mask_dtype: torch.dtype) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (n, LENGTH), generator=g)
    lengths = torch.randint(4, LENGTH + 1, (n, 1), generator=g)
    return {"input_ids": ids, "attention_mask": (torch.arange(LENGTH) < lengths).to(mask_dtype)}


def _subject(kind: str, mask_dtype: torch.dtype = torch.long, n: int = 160) -> Subject:
    """The classifier as a workload labelled by its own predictions: 128 train, 32 eval."""
    torch.manual_seed(0)
    model = TokenClassifier()
    tokens = _tokens(n, mask_dtype)
    with torch.no_grad():  # train-mode BatchNorm once, so its statistics are not the defaults
        model.train()(**tokens)
    model.eval()
    inputs: Inputs = tokens if kind == "dict" else (tokens["input_ids"], tokens["attention_mask"])
    with torch.no_grad():
        targets = call(model, inputs).argmax(1)
    split = DataSplit(inputs, targets)
    held_out = DataSplit(take(inputs, slice(128, n)), targets[128:])
    example = take(inputs, slice(0, 1))
    return Subject.prepare(Workload(f"tokens-{kind}", model, example, split.head(128), held_out))


def _prune_all(subject: Subject) -> Strategy:
    return Strategy({u.name: {"prune": 0.5} for u in subject.units if u.allows("prune")})


@pytest.mark.parametrize(
    ("kind", "mask_dtype"), [("dict", torch.long), ("dict", torch.bool), ("tuple", torch.long)]
)
def test_unchanged_strategy_on_ort_scores_what_the_model_scores_in_torch(kind, mask_dtype):
    subject = _subject(kind, mask_dtype)

    m = measure(subject, Strategy(), FAST)

    assert m.accuracy == 100.0  # labels are the model's own predictions
    assert m.latency.median_ms > 0
    assert m.flops > 0


@pytest.mark.parametrize("kind", ["dict", "tuple"])
def test_ort_session_takes_int64_feeds_by_name_and_matches_torch(kind, tmp_path):
    subject = _subject(kind)
    candidate = build_candidate(subject, Strategy(), FAST.build)
    batch = subject.workload.eval.inputs

    compiled = OnnxRuntimeCPU().compile(candidate, tmp_path)
    graph = onnx.load(str(compiled.onnx_path)).graph

    names = ["input_ids", "attention_mask"] if kind == "dict" else ["input_0", "input_1"]
    assert [i.name for i in graph.input] == names
    assert {i.type.tensor_type.elem_type for i in graph.input} == {onnx.TensorProto.INT64}
    with torch.no_grad():
        expected = call(candidate.model, batch).numpy()
    np.testing.assert_allclose(compiled.run(to_feed(batch)), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["dict", "tuple"])
def test_int8_strategy_calibrates_on_token_batches_and_is_timed(kind):
    subject = _subject(kind)

    result = evaluate(subject, Strategy({"*": {"precision": "int8"}}), FAST)

    assert result.info["int8_nodes"] >= 3  # fc1, fc2, head
    assert result.accuracy >= 75.0  # int8 of a 4-class self-labelled head: most labels hold
    assert result.latency_ms > 0


@pytest.mark.parametrize("kind", ["dict", "tuple"])
def test_pruned_strategy_with_recovery_builds_exports_and_is_timed(kind):
    subject = _subject(kind)
    config = EvalConfig(
        latency=QUICK_LATENCY, build=BuildConfig(bn_batches=2, recovery=RecoveryConfig(steps=3))
    )

    result = evaluate(subject, _prune_all(subject), config)

    assert result.flops < result.baseline_flops
    assert result.params < result.baseline_params
    assert result.latency_ms > 0
    assert result.info["recovery"]["steps"] == 3


def test_latency_over_real_dict_inputs_times_each_of_them(tmp_path):
    subject = _subject("dict")
    candidate = build_candidate(subject, Strategy(), FAST.build)
    _, compiled = measure_candidate(subject, candidate, FAST, tmp_path, label="unchanged")
    samples = subject.workload.eval.head(3).inputs

    stats = measure_over_inputs(compiled, samples, QUICK_LATENCY)

    assert batch_size(samples) == 3
    assert stats.inputs == 3
    assert stats.input_mean_ms is not None and stats.input_mean_ms > 0


def test_torch_runtime_runs_a_dict_model_by_keyword(tmp_path):
    from runners import get_runtime

    subject = _subject("dict", torch.bool)
    candidate = build_candidate(subject, Strategy(), FAST.build)
    batch = subject.workload.eval.inputs

    compiled = get_runtime("torch-cpu").compile(candidate, tmp_path)

    with torch.no_grad():
        expected = call(candidate.model, batch).numpy()
    np.testing.assert_allclose(compiled.run(to_feed(batch)), expected, atol=1e-6)
