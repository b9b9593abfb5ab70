"""Bring your own MobileNet: inverted residuals with depthwise convolutions, on digits.

    layerpilot profile --model examples/mobilenet.py:build
    layerpilot search  --model examples/mobilenet.py:build --time-budget 20m
    layerpilot export  runs/<dir> --format onnx --out mobilenet/

A MobileNetV2-style CNN (stem, six inverted-residual blocks of expand 1×1 → depthwise 3×3 →
project 1×1 with ReLU6 and BatchNorm, four of them with a residual connection, a 1×1 head)
on scikit-learn's digits upsampled to 1×16×16. Trained on first use (about half a minute) and
cached like a built-in (`envs.workloads.cache.load_or_train`: the key hashes this file).

What layerpilot sees: each depthwise conv is pruned together with the expand conv that feeds
it (torch-pruning couples them), the four residual blocks can be skipped, every conv has a
precision. On ONNX Runtime CPU, int8 everywhere is *slower* than fp32 on such a model (the
depthwise convs), which is why the choice is per layer and measured.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from envs.workloads import DataSplit, Workload
from envs.workloads.cache import BuiltinWorkload, load_or_train
from envs.workloads.training import TrainConfig


class InvertedResidual(nn.Module):
    """Expand 1×1 → depthwise 3×3 → project 1×1; a residual when the shape is kept."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.residual = stride == 1 and cin == cout
        self.expand = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()
        )
        self.depthwise = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
        )
        self.project = nn.Sequential(nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.residual else out


class MobileNet(nn.Module):
    """Stem 3×3 → six inverted residuals (16→24→32 channels) → 1×1 head → classifier."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6()
        )
        self.blocks = nn.Sequential(
            InvertedResidual(16, 16, 1, 4),
            InvertedResidual(16, 24, 2, 4),
            InvertedResidual(24, 24, 1, 4),
            InvertedResidual(24, 32, 2, 4),
            InvertedResidual(32, 32, 1, 4),
            InvertedResidual(32, 32, 1, 4),
        )
        self.head = nn.Sequential(
            nn.Conv2d(32, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU6()
        )
        self.classifier = nn.Linear(128, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(x.mean((2, 3)))


def load_data() -> tuple[DataSplit, DataSplit]:
    """Digits as 1×16×16 float32 images (bilinear ×2); a stratified 75/25 train/eval split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    images = F.interpolate(images, scale_factor=2, mode="bilinear", align_corners=False)
    targets = torch.from_numpy(digits.target.astype(np.int64))
    train_idx, eval_idx = train_test_split(
        np.arange(len(targets)), test_size=0.25, stratify=digits.target, random_state=0
    )
    return (
        DataSplit(images[train_idx], targets[train_idx]),
        DataSplit(images[eval_idx], targets[eval_idx]),
    )


RECIPE = BuiltinWorkload(
    name="byo-mobilenet-digits",
    description="MobileNetV2-style CNN on digits 1×16×16 (examples/mobilenet.py)",
    make_model=MobileNet,
    load_data=load_data,
    train_config=TrainConfig(epochs=20, optimizer="adamw", lr=3e-3, weight_decay=1e-4, max_shift=1),
    source_module=__name__,
)


def build() -> Workload:
    """The bring-your-own entry point: the trained MobileNet (trained once, then cached)."""
    return load_or_train(RECIPE)


if __name__ == "__main__":
    wl = build()
    print(f"{wl.name}: eval accuracy {wl.info['baseline_accuracy_torch']:.2f} %")
