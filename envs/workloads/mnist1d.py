"""``mnist1d-cnn`` and ``mnist1d-transformer``: two models on MNIST-1D, generated locally.

MNIST-1D (Greydanus, 2020) renders ten 1-D digit templates of length 40 with random padding,
scaling, translation, shear and correlated noise. It is generated here with the ``mnist1d``
package's own generator (never its download path) with more samples than the package default,
because both models are data-hungry and generation takes seconds.
"""

from __future__ import annotations

import random

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from envs.workloads.base import DataSplit
from envs.workloads.cache import BuiltinWorkload
from envs.workloads.training import TrainConfig

SEQ_LEN = 40
NUM_SAMPLES = 12_500
"""Samples generated in all; ``TRAIN_SPLIT`` of them train, the rest evaluate."""
TRAIN_SPLIT = 0.8
DATA_SEED = 42
"""The generator's seed (the package default); fixed, so every training seed sees the same data."""

CNN_WIDTHS = (96, 192, 384)
CNN_BLOCKS_PER_STAGE = 3
CNN_TRAIN = TrainConfig(epochs=3, batch_size=128, optimizer="sgd", lr=0.1, weight_decay=5e-4)

TRANSFORMER_DIM = 256
TRANSFORMER_HEADS = 8
TRANSFORMER_FFN = 768
TRANSFORMER_LAYERS = 4
PATCH = 4
"""Embedding kernel; stride ``PATCH // 2``, so tokens overlap by half."""
TRANSFORMER_TRAIN = TrainConfig(
    epochs=3, batch_size=128, optimizer="adamw", lr=1e-3, weight_decay=0.05, grad_clip=1.0
)


def load_data() -> tuple[DataSplit, DataSplit]:
    """MNIST-1D as ``[N, 1, 40]`` float32 signals (zero mean, unit std) and class indices.

    The generator seeds Python's and NumPy's global random state; both are restored afterwards.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = NUM_SAMPLES
    args.train_split = TRAIN_SPLIT
    args.seed = DATA_SEED
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)

    def split(x: np.ndarray, y: np.ndarray) -> DataSplit:
        inputs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).unsqueeze(1)
        return DataSplit(inputs, torch.from_numpy(np.asarray(y, dtype=np.int64)))

    # make_dataset shuffles before splitting, so both splits are already mixed by class.
    return split(data["x"], data["y"]), split(data["x_test"], data["y_test"])


class BasicBlock1d(nn.Module):
    """Two 1-D convolutions (kernel 3) with BatchNorm and a residual connection.

    ``downsample`` is a 1×1 convolution + BatchNorm when the block changes stride or width,
    otherwise ``None`` (identity shortcut).
    """

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm1d(cout)
        self.conv2 = nn.Conv1d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm1d(cout)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv1d(cin, cout, 1, stride, bias=False), nn.BatchNorm1d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + identity)


class ResNet1d(nn.Module):
    """A 1-D ResNet: conv stem, three stages of ``BasicBlock1d``, average pool, linear head."""

    def __init__(
        self, widths: tuple[int, int, int] = CNN_WIDTHS, blocks: int = CNN_BLOCKS_PER_STAGE
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(1, widths[0], 5, 1, 2, bias=False)
        self.bn1 = nn.BatchNorm1d(widths[0])
        self.layer1 = self._stage(widths[0], widths[0], blocks, stride=1)
        self.layer2 = self._stage(widths[0], widths[1], blocks, stride=2)
        self.layer3 = self._stage(widths[1], widths[2], blocks, stride=2)
        self.fc = nn.Linear(widths[2], 10)
        for m in self.modules():
            if isinstance(m, nn.Conv1d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @staticmethod
    def _stage(cin: int, cout: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock1d(cin, cout, stride)]
        layers += [BasicBlock1d(cout, cout) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(x.mean(2))


class Transformer1d(nn.Module):
    """Conv patch embedding + learned positions + ``nn.TransformerEncoder`` + mean pool + linear.

    The encoder layers are stock ``nn.TransformerEncoderLayer`` (pre-norm, GELU, no dropout), so
    the search sees exactly what a user's PyTorch transformer would give it.
    """

    def __init__(
        self,
        dim: int = TRANSFORMER_DIM,
        heads: int = TRANSFORMER_HEADS,
        ffn: int = TRANSFORMER_FFN,
        layers: int = TRANSFORMER_LAYERS,
        patch: int = PATCH,
    ) -> None:
        super().__init__()
        stride = max(1, patch // 2)
        tokens = (SEQ_LEN + 2 * (patch // 4) - patch) // stride + 1
        self.embed = nn.Conv1d(1, dim, patch, stride, patch // 4)
        self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            dim, heads, ffn, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(
            layer, layers, norm=nn.LayerNorm(dim), enable_nested_tensor=False
        )
        self.fc = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).transpose(1, 2) + self.pos
        return self.fc(self.encoder(tokens).mean(1))


CNN = BuiltinWorkload(
    name="mnist1d-cnn",
    description="1-D ResNet (3 stages × 3 blocks, widths 96/192/384) on MNIST-1D, 1×40",
    make_model=ResNet1d,
    load_data=load_data,
    train_config=CNN_TRAIN,
    source_module=__name__,
)

TRANSFORMER = BuiltinWorkload(
    name="mnist1d-transformer",
    description="4-layer transformer encoder (d 256, 8 heads, FFN 768) on MNIST-1D, 1×40",
    make_model=Transformer1d,
    load_data=load_data,
    train_config=TRANSFORMER_TRAIN,
    source_module=__name__,
)
