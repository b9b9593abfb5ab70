"""Bring your own model: a function that takes no arguments and returns a ``Workload``.

Point any layerpilot command at it with ``--model path/to/file.py:function`` (or
``--model my_package.module:function`` for an importable module)::

    layerpilot profile --model examples/byo_model.py:build
    layerpilot evaluate --model examples/byo_model.py:build --strategy '{"*": {"prune": 0.5}}'

A ``Workload`` bundles four things:

* ``model`` -- a trained ``nn.Module`` built from standard layers (Conv/Linear/BatchNorm/
  activations, residual blocks, ``nn.TransformerEncoderLayer``). layerpilot never modifies it;
  every candidate is built on a copy.
* ``example_input`` -- one input with batch size 1, used for tracing, ONNX export and latency:
  a tensor, or a tuple / dict of tensors of any dtype (e.g. ``{"input_ids": ..., "attention_mask":
  ...}``, int64), with the splits' inputs in the same structure.
* ``train`` -- a ``DataSplit`` used for int8 calibration, BatchNorm re-estimation and
  fine-tuning. A few hundred samples are enough; it need not be the full training set.
* ``eval`` -- the held-out ``DataSplit`` on which ``metric`` (default: top-1 accuracy in percent)
  is reported for every candidate.

Here the model is a small CNN trained in a few seconds on scikit-learn's 8×8 digits. In
practice ``build`` would load your checkpoint
(``model.load_state_dict(torch.load(path, weights_only=True))``) and your data instead of
training.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from envs.workloads import DataSplit, Workload


def make_model() -> nn.Module:
    """Two conv blocks and a linear classifier for 1×8×8 images."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1, stride=2, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64 * 4 * 4, 10),
    )


def load_data() -> tuple[DataSplit, DataSplit]:
    """Digits as 1×8×8 float32 images in [0, 1]; a stratified 75/25 train/eval split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    targets = torch.from_numpy(digits.target.astype(np.int64))
    train_idx, eval_idx = train_test_split(
        np.arange(len(targets)), test_size=0.25, stratify=digits.target, random_state=0
    )
    return (
        DataSplit(images[train_idx], targets[train_idx]),
        DataSplit(images[eval_idx], targets[eval_idx]),
    )


def train(model: nn.Module, data: DataSplit, *, epochs: int = 15, seed: int = 0) -> nn.Module:
    """Plain Adam training; shuffling uses its own generator, so the result is reproducible."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(data), generator=generator)
        for start in range(0, len(data) - 63, 64):
            idx = order[start : start + 64]
            loss = F.cross_entropy(model(data.inputs[idx]), data.targets[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def build() -> Workload:
    """The bring-your-own entry point: no arguments, returns a ``Workload``."""
    train_split, eval_split = load_data()
    # Initialise under a forked RNG so loading a workload leaves torch's global seed untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = make_model()
    train(model, train_split)
    return Workload(
        name="byo-digits-cnn",
        model=model,
        example_input=eval_split.inputs[:1],
        train=train_split,
        eval=eval_split,
        description="small CNN on scikit-learn digits, 1×8×8 (examples/byo_model.py)",
    )


if __name__ == "__main__":
    from envs.workloads import accuracy

    wl = build()
    with torch.no_grad():
        acc = accuracy(wl.model(wl.eval.inputs).numpy(), wl.eval.targets.numpy())
    print(f"{wl.name}: eval accuracy {acc:.1f} % on {len(wl.eval)} samples")
