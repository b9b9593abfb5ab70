"""Hugging Face encoder layers as first-class units, on a real ``transformers`` BERT built from a
small config (nothing downloaded): whole layers skipped, heads pruned across Q/K/V and the
output projection, FFN width pruned, and the pooler (which the exported graph drops) not a unit.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from envs.workloads.base import DataSplit, Workload
from envs.workloads.inputs import call, take
from runners.build import BuildConfig, Subject, build_candidate
from runners.evaluate import EvalConfig, measure
from runners.onnxruntime import OnnxRuntimeCPU
from search_spaces import Strategy
from search_spaces.actions.skip import Skipped
from search_spaces.heads import head_layout

from models import QUICK_LATENCY

transformers = pytest.importorskip("transformers")

FAST = EvalConfig(latency=QUICK_LATENCY, build=BuildConfig(bn_batches=0))
VOCAB, LENGTH, HIDDEN, HEADS, LAYERS = 100, 16, 64, 4, 3
LAYER = "bert.encoder.layer.{}"
ATTENTION = "bert.encoder.layer.{}.attention.self"


class SentenceEncoder(nn.Module):
    """``BertModel`` → masked mean of the last hidden states: a sentence embedding."""

    def __init__(self) -> None:
        super().__init__()
        config = transformers.BertConfig(
            vocab_size=VOCAB,
            hidden_size=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            intermediate_size=2 * HIDDEN,
            max_position_embeddings=LENGTH,
            attn_implementation="eager",
        )
        self.bert = transformers.BertModel(config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def cosine(outputs: np.ndarray, targets: np.ndarray) -> float:
    """Mean cosine similarity to the original embeddings, in percent."""
    num = (outputs * targets).sum(1)
    den = np.linalg.norm(outputs, axis=1) * np.linalg.norm(targets, axis=1) + 1e-12
    return float(100.0 * (num / den).mean())


@pytest.fixture(scope="module")
def subject() -> Subject:
    torch.manual_seed(0)
    model = SentenceEncoder().eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (48, LENGTH), generator=g)
    lengths = torch.randint(6, LENGTH + 1, (48, 1), generator=g)
    tokens = {"input_ids": ids, "attention_mask": (torch.arange(LENGTH) < lengths).long()}
    with torch.no_grad():
        targets = call(model, tokens)
    split = DataSplit(tokens, targets)
    held_out = DataSplit(take(tokens, slice(32, 48)), targets[32:])
    workload = Workload(
        "bert-tiny", model, take(tokens, slice(0, 1)), split.head(32), held_out, metric=cosine
    )
    return Subject.prepare(workload)


def test_every_layer_offers_skip_head_pruning_ffn_width_and_precision(subject: Subject) -> None:
    units = {u.name: u for u in subject.units}
    for i in range(LAYERS):
        layer, attention = units[LAYER.format(i)], units[ATTENTION.format(i)]
        assert layer.allows("skip"), layer.allowed
        assert "reads one tensor" in layer.allowed["dynamic_skip"]  # a dict of token inputs
        assert attention.kind == "attention" and attention.heads == HEADS
        assert attention.allows("prune"), attention.allowed
        ffn = units[f"{LAYER.format(i)}.intermediate.dense"]
        assert ffn.allows("prune") and ffn.allows("precision")
        query = units[f"{ATTENTION.format(i)}.query"]
        assert not query.allows("prune") and "prune its heads there" in query.allowed["prune"]
    assert not any(name.startswith("bert.pooler") for name in units)  # not in the graph


def test_heads_are_removed_together_across_qkv_and_the_output_projection(
    subject: Subject,
) -> None:
    strategy = Strategy.from_dict({ATTENTION.format(0): {"prune": 0.5}})
    model = build_candidate(subject, strategy, FAST.build).model

    layout = head_layout(model, ATTENTION.format(0))
    assert layout is not None and layout.heads == HEADS // 2
    attention = model.get_submodule(ATTENTION.format(0))
    assert attention.num_attention_heads == 2 and attention.all_head_size == HIDDEN // 2
    for path in layout.projections:
        assert model.get_submodule(path).out_features == HIDDEN // 2
    assert model.get_submodule(layout.out).in_features == HIDDEN // 2
    assert model.get_submodule(layout.out).out_features == HIDDEN  # the residual stream stays
    assert head_layout(model, ATTENTION.format(1)).heads == HEADS  # type: ignore[union-attr]


def test_a_compressed_encoder_exports_runs_on_ort_and_is_deterministic(
    subject: Subject, tmp_path
) -> None:
    strategy = Strategy.from_dict(
        {
            LAYER.format(1): {"skip": True},
            ATTENTION.format(0): {"prune": 0.5},
            f"{LAYER.format(2)}.intermediate.dense": {"prune": 0.5},
            "*": {"precision": "int8"},  # reaches only units in the graph: not the pooler
        }
    )
    first = build_candidate(subject, strategy, FAST.build)
    second = build_candidate(subject, strategy, FAST.build)
    assert isinstance(first.model.get_submodule(LAYER.format(1)), Skipped)
    batch = subject.workload.eval.inputs
    with torch.no_grad():
        out_first, out_second = call(first.model, batch), call(second.model, batch)
    assert out_first.shape == (16, HIDDEN)
    torch.testing.assert_close(out_first, out_second)

    m = measure(subject, strategy, FAST)
    assert m.flops < subject.units.total_flops
    assert 0.0 < m.accuracy < 100.0  # a cosine, below the unchanged model's
    compiled = OnnxRuntimeCPU().compile(first, tmp_path)
    assert compiled.onnx_path.exists()


def test_the_unchanged_strategy_scores_what_the_model_scores(subject: Subject) -> None:
    m = measure(subject, Strategy(), FAST)
    assert m.accuracy == pytest.approx(100.0, abs=1e-3)  # cosine of the model with itself
