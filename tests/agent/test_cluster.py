"""A search on a real multi-node Ray cluster, started on this machine's loopback: a head and a
worker node (one CPU each, so two evaluators measure in parallel). The search joins it with
``--address``; candidates must be measured on both nodes, and killing the worker node mid-search
must cost no candidate (retried on the head, or recorded as failed) (slow)."""

from __future__ import annotations

import json
import os
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


@pytest.fixture
def cluster() -> Iterator[Any]:
    """A head and one worker node on loopback, torn down even when the test fails."""
    cluster_utils = pytest.importorskip("ray.cluster_utils")
    node = {"num_cpus": 1, "node_ip_address": LOOPBACK, "object_store_memory": 100 * 2**20}
    cluster = cluster_utils.Cluster(
        initialize_head=True, head_node_args={**node, "include_dashboard": False}
    )
    try:
        cluster.add_node(**node)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        cluster.shutdown()


def _search(tmp: Path, cache: Path, address: str, budget: int) -> subprocess.Popen[str]:
    env = {**os.environ, "LAYERPILOT_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "search", "--workload", "digits-resnet",
         "--agent", "random", "--config", str(quick_config(tmp, budget)), "--out", "s",
         "--address", address, "--no-log-model", "--json"],
        cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _finish(proc: subprocess.Popen[str], timeout: float = 480) -> dict[str, Any]:
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    assert stdout.strip(), stderr[-3000:]
    return dict(json.loads(stdout))


def _runs(tmp: Path, summary: dict[str, Any]) -> list[dict[str, Any]]:
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    return load_search_runs(uri, summary["parent_run_id"], with_strategy=False)


@pytest.mark.slow
def test_search_on_a_two_node_cluster_measures_on_both_nodes(
    cluster: Any, tmp_path: Path, workload_cache: Path
) -> None:
    budget = 8
    summary = _finish(_search(tmp_path, workload_cache, cluster.address, budget))

    assert summary["candidates"] == budget
    runs = _runs(tmp_path, summary)
    nodes = {r["tags"].get("layerpilot.node") for r in runs}
    cluster_nodes = {n.node_id for n in [cluster.head_node, *cluster.worker_nodes]}
    assert nodes == cluster_nodes  # every candidate names its node; both nodes measured
    assert len(runs) == budget


@pytest.mark.slow
def test_losing_a_worker_node_mid_search_loses_no_candidate(
    cluster: Any, tmp_path: Path, workload_cache: Path
) -> None:
    budget = 8
    [worker] = cluster.worker_nodes
    proc = _search(tmp_path, workload_cache, cluster.address, budget)
    log = tmp_path / "s" / "candidates.jsonl"
    deadline = time.monotonic() + 300
    while not log.exists() or len(log.read_text().splitlines()) < 2:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no candidates within 300 s"
        time.sleep(0.1)
    landed_before = len(log.read_text().splitlines())
    cluster.remove_node(worker, allow_graceful=False)  # its raylet and workers SIGKILLed
    summary = _finish(proc)

    assert summary["candidates"] == budget
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(records) == budget
    later = [r["outcome"] for r in records[landed_before + 1 :]]
    assert later and all(o["node"] == cluster.head_node.node_id for o in later)
    # the candidate the worker node was measuring was retried on the head, or failed cleanly
    hit = [
        o
        for r in records
        if (o := r["outcome"])["attempts"] > 1 or "WorkerDiedError" in (o["error"] or "")
    ]
    assert hit, [r["outcome"] for r in records]
    assert all(o["status"] == "ok" or "WorkerDiedError" in o["error"] for o in hit)
    retried = [o for o in hit if o["attempts"] > 1 and o["status"] == "ok"]
    assert all(o["node"] == cluster.head_node.node_id for o in retried)
