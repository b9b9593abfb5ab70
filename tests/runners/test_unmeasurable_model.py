"""A model that cannot be measured is the model's fault: one clear error, blamed on the model.

Issue 18 (B.14): an op the ONNX exporter cannot handle (``torch.fft``) gave a traceback and
printed 37 lines of TorchScript graph on stdout under ``--json``; a model whose *baseline* gives
NaN was blamed on the strategy.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from agent.cli import EXIT_USAGE, main
from envs.workloads import DataSplit, Workload
from runners.build import Subject
from runners.evaluate import BaselineError, EvalConfig, EvaluationError, evaluate, measure
from runners.latency import LatencyConfig
from runners.onnx_export import OnnxExportError, export_onnx
from search_spaces import Strategy

FAST = EvalConfig(latency=LatencyConfig(warmup=1, round_runs=2, min_rounds=2, max_rounds=2))

MODELS = """
import torch
from torch import nn
from envs.workloads import DataSplit, Workload


class FFTNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(66, 3)

    def forward(self, x):
        f = torch.fft.rfft(x)
        return self.fc(torch.cat([f.real, f.imag], dim=-1))


class NaNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(x) * float("nan")


def _workload(name, model, width):
    torch.manual_seed(0)
    x, y = torch.randn(32, width), torch.randint(0, 3, (32,))
    return Workload(name, model.eval(), x[:1], DataSplit(x, y), DataSplit(x, y))


def fft():
    return _workload("fft", FFTNet(), 64)


def nan():
    return _workload("nan", NaNNet(), 8)
"""


class FFTNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(66, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.fft.rfft(x)
        return self.fc(torch.cat([f.real, f.imag], dim=-1))


class NaNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * float("nan")


def _subject(model: nn.Module, width: int) -> Subject:
    torch.manual_seed(0)
    x, y = torch.randn(32, width), torch.randint(0, 3, (32,))
    return Subject.prepare(Workload("m", model.eval(), x[:1], DataSplit(x, y), DataSplit(x, y)))


def test_an_op_without_an_onnx_form_is_an_export_error_and_stdout_stays_clean(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(OnnxExportError, match=r"FFTNet does not export to ONNX.*fft_rfft"):
        export_onnx(FFTNet().eval(), torch.randn(1, 64), tmp_path / "m.onnx")
    out, err = capfd.readouterr()
    assert out == ""  # the exporter's TorchScript dump went to stderr
    assert "graph" in err


def test_a_baseline_that_gives_nan_is_blamed_on_the_model_not_a_strategy() -> None:
    subject = _subject(NaNNet(), 8)
    with pytest.raises(BaselineError, match=r"unchanged model 'm'.*NaN/inf") as info:
        evaluate(subject, Strategy({"fc": {"precision": "int8"}}), FAST)
    assert "strategy" not in str(info.value).split(":", 1)[1]
    assert isinstance(info.value.__cause__, EvaluationError)
    with pytest.raises(BaselineError):
        measure(subject, Strategy(), FAST)


@pytest.mark.parametrize(
    ("function", "fragment"),
    [("fft", "does not export to ONNX"), ("nan", "gives NaN/inf outputs")],
)
def test_evaluate_and_search_on_an_unmeasurable_model_exit_2_with_one_line(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], function: str, fragment: str
) -> None:
    models = tmp_path / "models.py"
    models.write_text(MODELS)
    spec = f"{models}:{function}"
    code = main(["evaluate", "--model", spec, "--strategy", "{}", "--json", "--max-seconds", "1"])
    out, err = capfd.readouterr()
    assert code == EXIT_USAGE
    assert out == ""  # nothing half-written on stdout under --json
    assert "error: no strategy can be compared with the unchanged model" in " ".join(err.split())
    assert fragment in " ".join(err.split())
    assert "Traceback" not in err

    out_dir = tmp_path / "search"
    code = main(
        ["search", "--model", spec, "--budget", "2", "--agent", "random", "--out", str(out_dir),
         "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--json"]
    )  # fmt: skip
    out, err = capfd.readouterr()
    assert code == EXIT_USAGE
    assert fragment in " ".join(err.split())
    assert json.loads((out_dir / "search.json").read_text())["status"] == "FAILED"
