"""The runtime registry, import hygiene, and the contract every runtime must honour."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import runners
from runners import UnknownRuntimeError, get_runtime, list_runtimes
from runners.base import Candidate, Compiled, Runtime

from models import make_model

_REPO = Path(__file__).resolve().parents[2]


def test_import_runners_loads_no_runtime_library_and_leaves_cuda_alone():
    code = (
        "import sys, runners, torch; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('onnxruntime', 'tensorrt'))); "
        "print(torch.cuda.is_initialized())"
    )

    result = subprocess.run(
        [sys.executable, "-c", code], cwd=_REPO, capture_output=True, text=True, check=True
    )

    assert result.stdout.split("\n")[:2] == ["[]", "False"]


def test_get_runtime_unknown_name_lists_the_known_ones():
    with pytest.raises(UnknownRuntimeError, match=r"onnxruntime-cpu.*tensorrt"):
        get_runtime("openvino")


def test_get_runtime_names_the_runtime_on_a_bad_option():
    with pytest.raises(TypeError, match="onnxruntime-cpu"):
        get_runtime("onnxruntime-cpu", device="cuda")


def test_runners_reexports_the_latency_protocol():
    stats = runners.measure_latency(lambda: None, runners.LatencyConfig(max_seconds=0.5))

    assert isinstance(stats, runners.LatencyStats)


@pytest.mark.parametrize("name", list_runtimes())
def test_runtime_constructs_with_threads_and_says_whether_it_runs_here(name):
    runtime = get_runtime(name, threads=1)

    assert isinstance(runtime, Runtime)
    assert runtime.name == name
    assert "fp32" in runtime.precisions
    reason = runtime.unavailable_reason()
    assert reason is None or (isinstance(reason, str) and reason)


@pytest.mark.parametrize("name", list_runtimes())
def test_runtime_runs_fp32_like_torch_at_any_batch_size(name, tmp_path):
    runtime = get_runtime(name, threads=1)
    if (reason := runtime.unavailable_reason()) is not None:
        pytest.skip(f"{name} unavailable: {reason}")
    model, x = make_model("resnet")
    batch = torch.randn(3, *x.shape[1:])

    compiled = runtime.compile(Candidate(model, x), tmp_path)

    assert isinstance(compiled, Compiled)
    assert compiled.runtime == name
    assert compiled.size_bytes > 0
    assert compiled.info
    with torch.no_grad():
        np.testing.assert_allclose(compiled.run(batch.numpy()), model(batch).numpy(), atol=1e-3)
        np.testing.assert_allclose(compiled.run(x.numpy()), model(x).numpy(), atol=1e-3)
