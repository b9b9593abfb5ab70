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
