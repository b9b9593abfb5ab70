from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # tests/models.py

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def workload_cache() -> Path:
    """Where built-in workloads are cached: $LAYERPILOT_CACHE (CI sets it) or the user cache."""
    return Path(os.environ.get("LAYERPILOT_CACHE", Path.home() / ".cache" / "layerpilot"))


@pytest.fixture
def eight_bit_int8(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make this machine look like a VNNI CPU, where ONNX Runtime CPU int8 keeps 8-bit weights
    (``runners.quantize.ort_cpu_int8``): for tests of caches written with 8-bit weights."""
    import runners.latency

    monkeypatch.setattr(runners.latency, "cpu_flags", lambda: frozenset({"avx2", "avx512_vnni"}))
