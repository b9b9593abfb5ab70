"""TensorRT: unavailable here is reported, not crashed into; a GPU test builds a real engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from runners.base import Candidate, RuntimeUnavailableError
from runners.tensorrt import TensorRT

from models import make_model

_REASON = TensorRT().unavailable_reason()


def test_tensorrt_unavailable_reason_is_a_sentence_when_it_cannot_run(tmp_path):
    if _REASON is None:
        pytest.skip("TensorRT can run here")
    model, x = make_model("resnet")

    assert isinstance(_REASON, str) and len(_REASON) > 20
    with pytest.raises(RuntimeUnavailableError, match="tensorrt"):
        TensorRT().compile(Candidate(model, x), tmp_path)


def test_tensorrt_rejects_an_empty_optimisation_profile():
    with pytest.raises(ValueError, match="max_batch"):
        TensorRT(max_batch=0)


@pytest.mark.gpu
@pytest.mark.skipif(_REASON is not None, reason=f"TensorRT unavailable: {_REASON}")
@pytest.mark.parametrize("precisions", [{}, {"": "fp16"}, {"layer1": "int8"}])
def test_tensorrt_engine_runs_close_to_torch(precisions, tmp_path):
    model, x = make_model("resnet")
    calibration = torch.randn(32, *x.shape[1:])
    candidate = Candidate(model, x, precisions, calibration if precisions else None)
    batch = torch.randn(6, *x.shape[1:])

    compiled = TensorRT().compile(candidate, tmp_path)
    out = compiled.run(batch.numpy())

    with torch.no_grad():
        ref = model(batch).numpy()
    assert (tmp_path / "model.engine").stat().st_size == compiled.size_bytes
    assert (tmp_path / "timing.cache").exists()
    assert out.shape == ref.shape and out.dtype == np.float32
    atol = 1e-3 if not precisions else 0.05
    np.testing.assert_allclose(out, ref, atol=atol, rtol=0)
