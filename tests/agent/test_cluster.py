"""A search on a real multi-node Ray cluster, started on this machine's loopback: a head and a
worker node (one CPU each, so two evaluators measure in parallel). The search joins it with
``--address``; candidates must be measured on both nodes, and SIGKILLing the worker node
mid-search must cost no candidate (retried on the head, or recorded as failed) (slow)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_search_cli import quick_config

from agent.tracking import load_search_runs

#: Not 127.0.0.1: Ray rewrites that address to the machine's outward IP (ray-project/ray#59110),
#: which a loopback-only cluster does not listen on. All of 127/8 is loopback.
LOOPBACK = "127.0.0.2"


#: Runs the cluster in its own process, so that RAY_AUTH_MODE is read before Ray's config is:
#: prints the address and node ids, then obeys "kill-worker" and "stop" on stdin.
CLUSTER = """
import json, os, sys
from ray.cluster_utils import Cluster
node = {"num_cpus": 1, "node_ip_address": sys.argv[1], "object_store_memory": 100 * 2**20}
cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
try:
    worker = cluster.add_node(**node)
    cluster.wait_for_nodes()
    ids = {"head": cluster.head_node.node_id, "worker": worker.node_id}
    print(json.dumps({"address": cluster.address, **ids}), flush=True)
    for line in sys.stdin:
        if line.strip() == "kill-worker":
            cluster.remove_node(worker, allow_graceful=False)  # raylet, workers: SIGKILL
            print("killed", flush=True)
        elif line.strip() == "stop":
            break
finally:
    cluster.shutdown()
"""


class LoopbackCluster:
    """A head and one worker node on loopback, with token authentication on (as `ray start`
    has it once a token exists)."""

    def __init__(self) -> None:
        subprocess.run(
            [sys.executable, "-m", "ray.scripts.scripts", "get-auth-token", "--generate"],
            check=True, capture_output=True,
        )  # fmt: skip
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CLUSTER, LOOPBACK],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        info = json.loads(self.proc.stdout.readline())
        self.address, self.head, self.worker = info["address"], info["head"], info["worker"]

    def kill_worker(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("kill-worker\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "killed"

    def stop(self) -> None:
        try:
            self.proc.communicate("stop\n", timeout=120)
        except (subprocess.TimeoutExpired, OSError, ValueError):
            pass
        finally:  # whatever is left of it (and the nodes it started) goes
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[LoopbackCluster]:
    """The cluster, torn down even when the test fails; the search inherits token mode."""
    pytest.importorskip("ray.cluster_utils")
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    cluster = LoopbackCluster()
    try:
        yield cluster
    finally:
        cluster.stop()


def _search(tmp: Path, cache: Path, address: str, budget: int) -> subprocess.Popen[str]:
    env = {**os.environ, "LAYERPILOT_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "search", "--workload", "digits-resnet",
         "--agent", "random", "--config", str(quick_config(tmp, budget)), "--out", "s",
         "--address", address, "--no-log-model", "--json"],
        cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _finish(proc: subprocess.Popen[str], timeout: float = 480) -> tuple[dict[str, Any], str]:
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    return dict(json.loads(stdout)), stderr


def _runs(tmp: Path, summary: dict[str, Any]) -> list[dict[str, Any]]:
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    return load_search_runs(uri, summary["parent_run_id"], with_strategy=False)


@pytest.mark.slow
def test_search_on_a_two_node_cluster_uses_both_nodes_and_survives_losing_one(
    cluster: LoopbackCluster, tmp_path: Path, workload_cache: Path
) -> None:
    budget = 12  # room for candidates after the loss even if the worker node starts slowly
    head, worker = cluster.head, cluster.worker
    proc = _search(tmp_path, workload_cache, cluster.address, budget)
    log = tmp_path / "s" / "candidates.jsonl"
    deadline = time.monotonic() + 300
    while {o["node"] for o in _outcomes(log)} != {head, worker}:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"not both nodes within 300 s: {_outcomes(log)}"
        time.sleep(0.1)
    landed_before = len(_outcomes(log))
    cluster.kill_worker()
    summary, summary_stderr = _finish(proc)

    # every candidate recorded once, each naming its node, in the files and in MLflow
    outcomes = _outcomes(log)
    assert summary["candidates"] == len(outcomes) == budget
    assert "token authentication is OFF" not in summary_stderr
    runs = _runs(tmp_path, summary)
    assert sorted(int(r["tags"]["layerpilot.index"]) for r in runs) == list(range(budget))
    assert {r["tags"]["layerpilot.node"] for r in runs} == {head, worker}
    # after the loss only the head measures
    later = outcomes[landed_before + 1 :]
    assert later and all(o["node"] == head for o in later)
    # the candidate the worker node was measuring was retried on the head, or failed cleanly
    hit = [o for o in outcomes if o["attempts"] > 1 or "WorkerDiedError" in (o["error"] or "")]
    assert hit, outcomes
    for o in hit:
        assert (o["status"] == "ok" and o["node"] == head) or "WorkerDiedError" in o["error"]


def _outcomes(log: Path) -> list[dict[str, Any]]:
    lines = log.read_text().splitlines() if log.exists() else []
    return [json.loads(line)["outcome"] for line in lines if line.endswith("}")]
