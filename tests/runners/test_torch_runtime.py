"""The eager PyTorch runtime (CPU here; the fp16 casting logic is checked on CPU too)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn

from runners.base import Candidate, RuntimeUnavailableError, UnsupportedPrecisionError
from runners.torch import TorchEager, apply_precisions

from models import make_model


@pytest.mark.parametrize("name", ["resnet", "bert"])
def test_torch_cpu_outputs_equal_the_model(name, tmp_path):
    model, x = make_model(name)
    batch = torch.randn(3, *x.shape[1:])

    compiled = TorchEager().compile(Candidate(model, x), tmp_path)
    out = compiled.run(batch.numpy())

    with torch.no_grad():
        np.testing.assert_array_equal(out, model(batch).numpy())
    assert out.dtype == np.float32


def test_torch_size_bytes_is_the_serialized_state_dict(tmp_path):
    model, x = make_model("resnet")
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)

    compiled = TorchEager().compile(Candidate(model, x), tmp_path)

    assert compiled.size_bytes == len(buffer.getvalue())


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_torch_cpu_rejects_precisions_it_does_not_run(precision, tmp_path):
    model, x = make_model("resnet")
    candidate = Candidate(model, x, {"layer1.0.conv1": precision}, torch.randn(4, 1, 16, 16))

    with pytest.raises(UnsupportedPrecisionError, match=rf"'layer1\.0\.conv1'.*{precision}"):
        TorchEager().compile(candidate, tmp_path)


def test_torch_run_sets_threads_and_restores_them(tmp_path):
    model, x = make_model("resnet")
    seen: list[int] = []
    model.register_forward_hook(lambda *_: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    threads = 1 if before != 1 else 2

    TorchEager(threads=threads).compile(Candidate(model, x), tmp_path).run(x.numpy())

    assert seen == [threads]
    assert torch.get_num_threads() == before


def test_torch_cuda_is_unavailable_without_a_gpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is available here")
    runtime = TorchEager(device="cuda")
    model, x = make_model("resnet")

    assert runtime.name == "torch-cuda"
    assert "fp16" in runtime.precisions
    assert "CUDA" in (runtime.unavailable_reason() or "")
    with pytest.raises(RuntimeUnavailableError, match="torch-cuda"):
        runtime.compile(Candidate(model, x), tmp_path)


def test_torch_runtime_rejects_unknown_device():
    with pytest.raises(ValueError, match="device"):
        TorchEager(device="tpu")


def test_apply_precisions_runs_mixed_fp16_modules_between_fp32_ones():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(8, 16), nn.ReLU(), nn.Sequential(nn.Linear(16, 16)), nn.Linear(16, 4)
    )
    x = torch.randn(5, 8)
    with torch.no_grad():
        ref = model(x)

    apply_precisions(model, {"2": "fp16", "2.0": "fp16"})

    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    assert dtypes["0.weight"] == dtypes["3.weight"] == torch.float32
    assert dtypes["2.0.weight"] == dtypes["2.0.bias"] == torch.float16
    with torch.no_grad():
        out = model(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=1e-2, rtol=1e-2)


def test_apply_precisions_keeps_an_fp32_override_inside_an_fp16_parent():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))

    apply_precisions(model, {"": "fp16", "1": "fp32"})

    assert model[0].weight.dtype == torch.float16
    assert model[1].weight.dtype == torch.float32
    with torch.no_grad():
        assert model(torch.randn(3, 4)).dtype == torch.float32
