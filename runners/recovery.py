"""Cheap accuracy recovery applied while a candidate is built.

Pruning and skipping shift the activation statistics that BatchNorm layers stored during
training; re-estimating them on a few calibration batches (no gradient steps) recovers much of
the lost accuracy for seconds of CPU time. Distillation fine-tuning comes later, here too.
"""

from __future__ import annotations

import torch
from torch import nn

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@torch.no_grad()
def reestimate_batchnorm(
    model: nn.Module, inputs: torch.Tensor, *, batch_size: int = 64, max_batches: int = 16
) -> int:
    """Recompute every BatchNorm's running mean/var from ``inputs``; return batches used.

    Uses a cumulative average (``momentum=None``) over at most ``max_batches`` batches, then
    restores each layer's momentum and puts the model back in eval mode. No weights change.
    """
    norms = [m for m in model.modules() if isinstance(m, _BN) and m.track_running_stats]
    if not norms or len(inputs) == 0:
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    used = 0
    try:
        for start in range(0, min(len(inputs), batch_size * max_batches), batch_size):
            model(inputs[start : start + batch_size])
            used += 1
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.eval()
    return used
