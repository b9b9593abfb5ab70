"""`layerpilot search --resume`: a search killed with SIGKILL continues without losing or
re-measuring a candidate, in the same MLflow parent run (slow: real measurements)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from mlflow import MlflowClient
from test_search_cli import layerpilot, quick_config

from agent.tracking import load_search_runs


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _kill_search_after(tmp_path: Path, cache: Path, args: list[str], landed: int) -> None:
    """Start ``layerpilot search ARGS`` and SIGKILL its whole process group once ``landed``
    candidates are recorded (the driver and its measurement worker die together, as in a
    crash)."""
    env = {**os.environ, "LAYERPILOT_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "search", *args],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    log = tmp_path / "s" / "candidates.jsonl"
    deadline = time.monotonic() + 300
    try:
        while len(_lines(log)) < landed:
            assert proc.poll() is None, f"search ended early: {proc.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "no candidates within 300 s"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_resume_after_sigkill_loses_nothing_and_measures_nothing_twice(
    tmp_path: Path, workload_cache: Path
) -> None:
    """The random agent replays its seeded proposals; the driver skips those already measured.
    (TPE's and PPO's `restore` are tested in test_baselines.py and test_ppo.py.)"""
    budget = 7
    args = ["--workload", "digits-resnet", "--agent", "random", "--out", "s",
            "--config", str(quick_config(tmp_path, budget)), "--no-log-model"]  # fmt: skip
    _kill_search_after(tmp_path, workload_cache, args, landed=3)
    out = tmp_path / "s"
    before = [json.loads(line) for line in _lines(out / "candidates.jsonl") if line.endswith("}")]
    measured_before = len(_lines(out / "cache.jsonl"))
    assert len(before) >= 3
    state = json.loads((out / "search.json").read_text())
    assert state["status"] == "RUNNING"  # killed: nothing got to write its end
    parent = state["mlflow"]["parent_run_id"]

    proc = layerpilot("search", "--resume", "s", "--json", cache=workload_cache, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["parent_run_id"] == parent and summary["candidates"] == budget

    records = [json.loads(line) for line in _lines(out / "candidates.jsonl")]
    assert [r["index"] for r in records] == list(range(budget))
    # nothing evaluated before the kill was lost or changed
    for old, new in zip(before, records, strict=False):
        assert old == new
    # nothing measured twice: one cache line per measurement, each strategy once
    keys = [json.loads(line)["key"] for line in _lines(out / "cache.jsonl")]
    assert len(keys) == len(set(keys)) >= measured_before
    assert len({json.dumps(r["outcome"]["strategy"], sort_keys=True) for r in records}) == budget
    assert len(keys) == sum(not r["cached"] for r in records)

    # the same parent run holds every candidate once, and is finished
    runs = load_search_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", parent, with_strategy=False)
    indices = Counter(int(r["tags"]["layerpilot.index"]) for r in runs)
    assert indices == Counter(range(budget))
    assert all(r["status"] in ("FINISHED", "FAILED") for r in runs)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.get_run(parent).info.status == "FINISHED"
    assert len(client.search_runs([client.get_run(parent).info.experiment_id])) == budget + 1
    state = json.loads((out / "search.json").read_text())
    assert state["status"] == "FINISHED" and len(state["resumed"]) == 1

    again = layerpilot("search", "--resume", "s", cache=workload_cache, cwd=tmp_path)
    assert again.returncode == 2 and "give a larger --budget" in " ".join(again.stderr.split())


def test_resume_rejects_a_directory_that_is_not_a_search(
    tmp_path: Path, workload_cache: Path
) -> None:
    (tmp_path / "empty").mkdir()
    proc = layerpilot("search", "--resume", "empty", cache=workload_cache, cwd=tmp_path)
    assert proc.returncode == 2 and "not a search directory" in proc.stderr


def test_resume_refuses_flags_that_would_change_the_search(
    tmp_path: Path, workload_cache: Path
) -> None:
    (tmp_path / "s").mkdir()
    proc = layerpilot(
        "search", "--resume", "s", "--agent", "ppo", "--lam", "2",
        cache=workload_cache, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "--agent, --lam cannot change it" in " ".join(proc.stderr.split())
