"""Security defaults: nothing listens beyond loopback unless the user says so, and Ray's token
authentication stays on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import main

PROBE = """
import json, logging, ray
logging.basicConfig(level=logging.WARNING)
from agent.config import SearchConfig
from agent.ray_init import init_ray
from ray._private.authentication.authentication_utils import is_token_auth_enabled
init_ray(SearchConfig())
info = ray._private.worker.global_worker.node.address_info
print(json.dumps({"token": is_token_auth_enabled(), "webui": info.get("webui_url")}))
ray.shutdown()
"""


def test_mlflow_ui_listens_on_loopback_unless_a_host_is_given(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    hosts: list[str] = []
    monkeypatch.setattr("agent.ui.run_ui", lambda uri, host, port, **kw: hosts.append(host) or 0)

    assert main(["ui"]) == 0
    assert capsys.readouterr().err == ""
    assert main(["ui", "--host", "0.0.0.0"]) == 0

    assert hosts == ["127.0.0.1", "0.0.0.0"]
    assert "anyone who can reach it" in " ".join(capsys.readouterr().err.split())


def _embedded_ray(**env: str) -> tuple[dict[str, object], str]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True, text=True, timeout=180, env={**os.environ, **env},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


@pytest.mark.slow
def test_embedded_ray_keeps_token_auth_on_and_starts_no_dashboard() -> None:
    facts, stderr = _embedded_ray()
    assert facts == {"token": True, "webui": None} or facts == {"token": True, "webui": ""}
    assert "token authentication is OFF" not in stderr


@pytest.mark.slow
def test_turning_ray_token_auth_off_is_warned_about() -> None:
    facts, stderr = _embedded_ray(RAY_AUTH_MODE="disabled")
    assert facts["token"] is False
    assert "Ray token authentication is OFF" in stderr


MODEL_FILE = """
import pathlib, torch
from torch import nn
from envs.workloads import DataSplit, Workload
pathlib.Path(__file__).with_suffix(".ran").write_text("imported")  # proves the code ran

def build():
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    model = nn.Sequential(nn.Linear(4, 2)).eval()
    return Workload("pinned", model, x[:1], DataSplit(x, y), DataSplit(x, y))
"""


def test_a_search_directory_runs_only_the_model_file_the_search_ran(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The spec pins the model file (absolute path + sha256): another working directory imports
    the same file, and a changed or missing file is refused before any of its code runs."""
    from agent.config import SearchConfig, eval_spec
    from runners.job import EvalSpec, EvalSpecError

    (tmp_path / "mine").mkdir()
    source = tmp_path / "mine" / "model.py"
    source.write_text(MODEL_FILE)
    marker = source.with_suffix(".ran")
    monkeypatch.chdir(tmp_path)
    spec = EvalSpec.from_dict(
        eval_spec(SearchConfig(workload=None, model="mine/model.py:build")).to_dict()
    )

    assert spec.model == f"{source.resolve()}:build" and spec.model_sha256 is not None
    monkeypatch.chdir(tmp_path / "mine")  # elsewhere: the same file, not ./mine/model.py
    assert spec.load_workload().name == "pinned" and marker.exists()

    marker.unlink()
    source.write_text(MODEL_FILE + "\nprint('something else')\n")
    with pytest.raises(EvalSpecError, match=r"model\.py changed since the search ran.*--model"):
        spec.load_workload()
    assert not marker.exists()  # refused before importing

    trusted = spec.with_model(f"{source}:build")
    assert trusted.model_sha256 != spec.model_sha256
    assert trusted.load_workload().name == "pinned"

    source.unlink()
    with pytest.raises(EvalSpecError, match="not there any more"):
        spec.load_workload()
