"""The CLI as a user runs it: a subprocess, its exit code, its JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BYO = f"{ROOT / 'examples' / 'byo_model.py'}:build"
STABLE_KEYS = {
    "accuracy",
    "baseline_accuracy",
    "latency_ms",
    "latency_p90_ms",
    "baseline_latency_ms",
    "speedup",
    "flops",
    "params",
    "size_bytes",
}


def layerpilot(*args: str, cache: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if cache is not None:
        env["LAYERPILOT_CACHE"] = str(cache)
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
    )


def test_evaluate_byo_model_prints_stable_json_keys():
    proc = layerpilot(
        "evaluate",
        "--model",
        BYO,
        "--strategy",
        '{"*": {"precision": "int8"}}',
        "--max-seconds",
        "1",
        "--json",
    )

    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data.keys() >= STABLE_KEYS
    assert data["baseline_accuracy"] > 50
    assert abs(data["accuracy"] - data["baseline_accuracy"]) < 10
    assert data["latency_ms"] > 0 and data["latency_p90_ms"] >= data["latency_ms"]
    assert data["params"] == data["baseline_params"]  # int8 changes precision, not structure
    assert data["size_bytes"] < data["baseline_size_bytes"]
    assert isinstance(data["latency_doubts"], list)  # why the speedup may be off (issue 18)
    assert all(isinstance(d, str) for d in data["latency_doubts"])


def test_evaluate_identity_strategy_keeps_baseline_accuracy():
    proc = layerpilot(
        "evaluate", "--model", BYO, "--strategy", "{}", "--max-seconds", "1", "--json"
    )

    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["accuracy"] == data["baseline_accuracy"]
    assert data["flops"] == data["baseline_flops"]


def test_evaluate_recovery_fine_tunes_the_plan_before_measuring_it():
    """What a plan gives after recovery, without a search."""
    plan = ("--strategy", '{"*": {"prune": 0.75}}', "--max-seconds", "1", "--json")
    runs = {
        level: layerpilot("evaluate", "--model", BYO, *plan, "--recovery", level)
        for level in ("none", "short")
    }

    for proc in runs.values():
        assert proc.returncode == 0, proc.stderr
    none, short = (json.loads(runs[level].stdout) for level in ("none", "short"))
    assert none["info"].get("recovery") is None
    assert short["info"]["recovery"]["steps"] == 40
    assert short["accuracy"] > none["accuracy"]
    assert short["flops"] == none["flops"]  # the same plan, fine-tuned


@pytest.mark.parametrize(
    ("strategy", "fragment"),
    [
        ('{"nope.conv": {"prune": 0.5}}', "no decision unit 'nope.conv'"),
        ('{"*": {"prune": 2}}', "prune ratio must be in"),
        ("{broken", "not valid JSON"),
        ("does/not/exist.json", "does not exist"),
    ],
)
def test_evaluate_bad_strategy_exits_2_with_a_clear_error(strategy, fragment):
    proc = layerpilot("evaluate", "--model", BYO, "--strategy", strategy)

    assert proc.returncode == 2
    assert "error:" in proc.stderr and fragment in proc.stderr
    assert "Traceback" not in proc.stderr


def test_evaluate_unknown_workload_lists_the_known_ones():
    proc = layerpilot("evaluate", "--workload", "imagenet", "--strategy", "{}")

    assert proc.returncode == 2
    assert "digits-resnet" in proc.stderr


def test_evaluate_fp16_on_cpu_runtime_is_refused_clearly():
    proc = layerpilot("evaluate", "--model", BYO, "--strategy", '{"*": {"precision": "fp16"}}')

    assert proc.returncode == 2
    assert "fp16" in proc.stderr and "Traceback" not in proc.stderr


def test_runtimes_reports_tensorrt_unavailable_with_reason_here():
    proc = layerpilot("runtimes", "--json")

    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert rows["onnxruntime-cpu"]["available"]
    if not rows["tensorrt"]["available"]:
        assert rows["tensorrt"]["reason"]


def test_profile_lists_units_with_latency_shares():
    proc = layerpilot("profile", "--model", BYO, "--json", "--runs", "10")

    assert proc.returncode == 0, proc.stderr
    units = json.loads(proc.stdout)["units"]
    assert units and all(
        {"name", "kind", "flops", "params", "latency_share"} <= u.keys() for u in units
    )
    assert 0.5 < sum(u["latency_share"] for u in units if u["kind"] in ("conv", "linear")) <= 1.0001


@pytest.mark.slow
def test_evaluate_builtin_workload_end_to_end(workload_cache):
    proc = layerpilot(
        "evaluate",
        "--workload",
        "digits-resnet",
        "--strategy",
        str(ROOT / "examples" / "strategies" / "prune50_int8.json"),
        "--json",
        cache=workload_cache,
    )

    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["baseline_accuracy"] > 95
    assert data["params"] < data["baseline_params"] / 2
    assert data["flops"] < data["baseline_flops"] / 2


def test_workloads_no_measure_lists_builtins_without_training(tmp_path):
    proc = layerpilot("workloads", "--no-measure", "--json", cache=tmp_path)

    assert proc.returncode == 0, proc.stderr
    names = [r["name"] for r in json.loads(proc.stdout)]
    assert names == ["digits-resnet", "mnist1d-cnn", "mnist1d-transformer"]
    assert not any(tmp_path.rglob("*.pt"))  # nothing was trained into the empty cache


@pytest.mark.slow
def test_workloads_measures_every_builtin(workload_cache):
    proc = layerpilot("workloads", "--json", cache=workload_cache)

    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert len(rows) == 3
    assert all(r["accuracy"] > 90 and r["latency_ms"] > 0 and r["flops"] > 0 for r in rows)


def test_sigterm_during_evaluate_cleans_up_like_ctrl_c(tmp_path: Path) -> None:
    """Issue 18 (B.15): SIGTERM during ``evaluate`` left its temporary folder behind (the
    default action kills Python before any cleanup). Every command now treats SIGTERM as
    Ctrl-C: the folder is removed and the exit code is 130."""
    import signal
    import time

    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "evaluate", "--model", BYO, "--strategy", "{}"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("layerpilot-*")) and proc.poll() is None:
        assert time.monotonic() < deadline, "evaluate never created its temporary folder"
        time.sleep(0.01)
    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)

    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert list(tmp_path.glob("layerpilot-*")) == []
