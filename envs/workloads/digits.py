"""``digits-resnet``: a CIFAR-style ResNet-20 on scikit-learn's handwritten digits at 32×32.

The data is scikit-learn's bundled ``load_digits`` (1,797 8×8 images, no download), scaled to
[0, 1] and upsampled bilinearly to 1×32×32 so the network has CIFAR's spatial layout: a 3×3 stem,
three stages of three ``BasicBlock`` (widths 32/64/128, the second and third stage halving the
resolution), global average pooling and a linear classifier.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from envs.workloads.base import DataSplit
from envs.workloads.cache import BuiltinWorkload
from envs.workloads.training import TrainConfig

NAME = "digits-resnet"
WIDTHS = (32, 64, 128)
"""Channels of the three stages."""
BLOCKS_PER_STAGE = 3
IMAGE_SIZE = 32
EVAL_FRACTION = 0.25
DATA_SEED = 0
"""Seed of the train/eval split and its shuffle; fixed, so every training seed is judged on the
same eval split."""

TRAIN = TrainConfig(
    epochs=8, batch_size=64, optimizer="sgd", lr=0.1, weight_decay=5e-4, max_shift=2
)


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with BatchNorm and a residual connection (He et al., 2016).

    ``downsample`` is a 1×1 convolution + BatchNorm when the block changes stride or width,
    otherwise ``None`` (identity shortcut).
    """

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + identity)


class DigitsResNet(nn.Module):
    """ResNet-20 layout (3 stages × 3 blocks) for 1×32×32 inputs and 10 classes."""

    def __init__(
        self, widths: tuple[int, int, int] = WIDTHS, blocks: int = BLOCKS_PER_STAGE
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.layer1 = self._stage(widths[0], widths[0], blocks, stride=1)
        self.layer2 = self._stage(widths[0], widths[1], blocks, stride=2)
        self.layer3 = self._stage(widths[1], widths[2], blocks, stride=2)
        self.fc = nn.Linear(widths[2], 10)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @staticmethod
    def _stage(cin: int, cout: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(cin, cout, stride)]
        layers += [BasicBlock(cout, cout) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(x.mean((2, 3)))


def load_data() -> tuple[DataSplit, DataSplit]:
    """The digits as 1×32×32 float32 images in [0, 1]: a stratified 75/25 train/eval split.

    Both splits are shuffled once with a fixed seed, so ``DataSplit.head(n)`` is a fair sample.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    images = F.interpolate(images, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear")
    targets = torch.from_numpy(digits.target.astype(np.int64))
    train_idx, eval_idx = train_test_split(
        np.arange(len(targets)),
        test_size=EVAL_FRACTION,
        stratify=digits.target,
        random_state=DATA_SEED,
        shuffle=True,
    )
    # train_test_split already returns shuffled indices, so the splits are mixed by class.
    train_idx, eval_idx = torch.from_numpy(train_idx), torch.from_numpy(eval_idx)
    return (
        DataSplit(images[train_idx].contiguous(), targets[train_idx]),
        DataSplit(images[eval_idx].contiguous(), targets[eval_idx]),
    )


WORKLOAD = BuiltinWorkload(
    name=NAME,
    description="ResNet-20 (widths 32/64/128) on scikit-learn digits upsampled to 1×32×32",
    make_model=DigitsResNet,
    load_data=load_data,
    train_config=TRAIN,
    source_module=__name__,
)
