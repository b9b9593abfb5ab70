"""Small models of standard layers that the transforms must handle (written for the tests)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from envs.workloads import DataSplit, Workload
from envs.workloads.digits import BasicBlock  # the same block the built-in ResNet uses
from runners.base import Candidate
from runners.build import Subject
from runners.latency import LatencyConfig


class TinyResNet(nn.Module):
    """Two stages of two residual blocks on 1×16×16."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = nn.Sequential(BasicBlock(16, 16), BasicBlock(16, 16))
        self.layer2 = nn.Sequential(BasicBlock(16, 32, 2), BasicBlock(32, 32))
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(x.mean((2, 3)))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1×1 expand, 3×3 depthwise, 1×1 project, residual."""

    def __init__(self, c: int, expand: int = 4) -> None:
        super().__init__()
        h = c * expand
        self.expand = nn.Sequential(nn.Conv2d(c, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU6())
        self.depthwise = nn.Sequential(
            nn.Conv2d(h, h, 3, 1, 1, groups=h, bias=False), nn.BatchNorm2d(h), nn.ReLU6()
        )
        self.project = nn.Sequential(nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(self.depthwise(self.expand(x)))


class DepthwiseNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        )
        self.blocks = nn.Sequential(InvertedResidual(16), InvertedResidual(16))
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


class TinyTransformer(nn.Module):
    """Conv patch embedding + 2 ``nn.TransformerEncoderLayer`` + mean pool, on 1×32 sequences."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv1d(1, 32, 4, 4)
        self.pos = nn.Parameter(torch.randn(1, 8, 32) * 0.02)
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).transpose(1, 2) + self.pos
        return self.fc(self.encoder(tokens).mean(1))


class BertSelfAttention(nn.Module):
    """HuggingFace BERT-style attention (separate query/key/value, heads by reshape)."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.num_attention_heads, self.head_size = heads, d // heads
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, t, _ = h.shape

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(b, t, self.num_attention_heads, self.head_size).transpose(1, 2)

        q, k, v = split(self.query(h)), split(self.key(h)), split(self.value(h))
        ctx = (q @ k.transpose(-1, -2) / self.head_size**0.5).softmax(-1) @ v
        return ctx.transpose(1, 2).reshape(b, t, -1)


class BertLayer(nn.Module):
    """Returns a tuple, like HuggingFace's ``BertLayer``."""

    def __init__(self, d: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.attention = BertSelfAttention(d, heads)
        self.attention_output = nn.Linear(d, d)
        self.norm1 = nn.LayerNorm(d)
        self.intermediate = nn.Linear(d, ffn)
        self.output = nn.Linear(ffn, d)
        self.norm2 = nn.LayerNorm(d)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor]:
        h = self.norm1(h + self.attention_output(self.attention(h)))
        return (self.norm2(h + self.output(F.gelu(self.intermediate(h)))),)


class TinyBert(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 32)
        self.layers = nn.ModuleList(BertLayer(32, 4, 64) for _ in range(2))
        self.classifier = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x.reshape(x.shape[0], 8, 4))
        for layer in self.layers:
            h = layer(h)[0]
        return self.classifier(h.mean(1))


class ResNet1d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(1, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm1d(16)
        self.layer1 = nn.Sequential(_Block1d(16), _Block1d(16))
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layer1(F.relu(self.bn1(self.conv1(x)))).mean(2))


class _Block1d(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv1d(c, c, 3, 1, 1, bias=False), nn.BatchNorm1d(c)
        self.conv2, self.bn2 = nn.Conv1d(c, c, 3, 1, 1, bias=False), nn.BatchNorm1d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


def _randomize_bn(model: nn.Module, seed: int) -> nn.Module:
    """Give BatchNorm layers non-trivial statistics, as a trained model has."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model


#: name -> (constructor, example input shape)
TEST_MODELS: dict[str, tuple[type[nn.Module], tuple[int, ...]]] = {
    "resnet": (TinyResNet, (1, 1, 16, 16)),
    "depthwise": (DepthwiseNet, (1, 1, 16, 16)),
    "transformer": (TinyTransformer, (1, 1, 32)),
    "bert": (TinyBert, (1, 32)),
    "resnet1d": (ResNet1d, (1, 1, 24)),
}


def make_model(name: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """A deterministic, eval-mode test model and its batch-1 example input."""
    ctor, shape = TEST_MODELS[name]
    torch.manual_seed(seed)
    model = _randomize_bn(ctor(), seed).eval()
    example = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1))
    return model, example


QUICK_LATENCY = LatencyConfig(
    warmup=2,
    warmup_seconds=0,
    round_runs=8,
    min_round_seconds=0,
    min_rounds=2,
    max_rounds=3,
    max_seconds=5,
    inputs=8,
)
"""A timing protocol for tests that need a latency, not a trustworthy one."""


def self_labelled_subject(name: str, samples: int, train: int) -> Subject:
    """``name`` from :data:`TEST_MODELS` as a workload labelled by its own predictions.

    ``samples`` random inputs; the first ``train`` are the train split, the rest the eval split.
    """
    model, x = make_model(name)
    g = torch.Generator().manual_seed(0)
    inputs = torch.randn(samples, *x.shape[1:], generator=g)
    with torch.no_grad():
        targets = model(inputs).argmax(1)
    split = DataSplit(inputs, targets)
    held_out = DataSplit(inputs[train:], targets[train:])
    return Subject.prepare(Workload(f"tiny-{name}", model, x, split.head(train), held_out))


def make_candidate(name: str, precisions: dict[str, str] | None = None) -> Candidate:
    """A tiny model as a runtime's candidate; int8 entries get 32 calibration inputs."""
    model, x = make_model(name)
    calibration = torch.randn(32, *x.shape[1:], generator=torch.Generator().manual_seed(7))
    return Candidate(model, x, precisions or {}, calibration if precisions else None)


def random_batch(candidate: Candidate, n: int) -> torch.Tensor:
    """``n`` seeded random inputs shaped like the candidate's example input."""
    shape = candidate.example_input.shape[1:]
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(11))


def torch_reference(candidate: Candidate, batch: torch.Tensor) -> np.ndarray:
    """The candidate's PyTorch outputs on ``batch`` (what a runtime must reproduce)."""
    with torch.no_grad():
        return candidate.model(batch).numpy()
