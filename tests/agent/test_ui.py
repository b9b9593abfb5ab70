"""The MLflow UI server over a logged search, queried through its REST API."""

from __future__ import annotations

import json
import socket
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.records import CandidateRecord
from agent.tracking import Tracker
from agent.ui import UIStartError, serve_ui, stop_ui, ui_command, wait_until_up
from runners.job import Outcome
from search_spaces import Strategy


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def candidate(index: int, ok: bool) -> CandidateRecord:
    strategy = Strategy({f"layer{index}": {"prune": 0.5}})
    if ok:
        result = {"accuracy": 96.0, "accuracy_drop": 1.0, "speedup": 1.5 + index}
        outcome = Outcome(strategy, "ok", result=result, eval_seconds=1.0)
    else:
        outcome = Outcome(strategy, "failed", error="RuntimeError: boom")
    return CandidateRecord(index, outcome, reward=0.1, source="random")


@pytest.fixture(scope="module")
def logged_search(tmp_path_factory: pytest.TempPathFactory) -> tuple[Tracker, str, list[str]]:
    workdir = tmp_path_factory.mktemp("ui")
    tracker = Tracker(workdir=workdir)
    parent = tracker.start_search(
        "random-digits", {"agent": "random"}, {"name": "digits"}, {"accuracy": 97.0}, workdir
    )
    run_ids = [tracker.log_candidate(candidate(i, ok=i != 1)) for i in range(3)]
    tracker.finish_search({"hypervolume": 3.0}, "FINISHED")
    return tracker, parent, run_ids


@pytest.fixture(scope="module")
def server(logged_search) -> Iterator[str]:
    tracker, _, _ = logged_search
    port = free_port()
    process = serve_ui(tracker.tracking_uri, port=port, quiet=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(url, timeout=120, process=process)
        yield url
    finally:
        stop_ui(process)
        assert process.poll() is not None


@pytest.mark.slow
def test_ui_serves_nested_candidate_runs_over_rest(server, logged_search):
    tracker, parent, run_ids = logged_search

    found = post(
        f"{server}/api/2.0/mlflow/runs/search",
        {
            "experiment_ids": [tracker.experiment_id],
            "filter": f"tags.mlflow.parentRunId = '{parent}'",
        },
    )

    runs = {run["info"]["run_id"]: run for run in found["runs"]}
    assert set(runs) == set(run_ids)
    statuses = sorted(run["info"]["status"] for run in runs.values())
    assert statuses == ["FAILED", "FINISHED", "FINISHED"]
    names = {run["info"]["run_name"].split(" ·")[0] for run in runs.values()}
    assert names == {"cand-0000", "cand-0001", "cand-0002"}


@pytest.mark.slow
def test_ui_serves_strategy_artifact_from_store(server, logged_search):
    _, _, run_ids = logged_search

    url = f"{server}/get-artifact?path=strategy.json&run_uuid={run_ids[0]}"
    with urllib.request.urlopen(url, timeout=10) as response:
        strategy = Strategy.from_json(response.read().decode())

    assert strategy == Strategy({"layer0": {"prune": 0.5}})


def test_ui_command_uses_this_python_and_artifacts_beside_database(tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    command = ui_command(uri, port=5055)

    assert command[:4] == [sys.executable, "-m", "mlflow", "server"]
    assert command[command.index("--backend-store-uri") + 1] == uri
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert command[command.index("--port") + 1] == "5055"
    root = command[command.index("--default-artifact-root") + 1]
    assert root == (tmp_path / "mlartifacts").as_uri()


def test_wait_until_up_raises_when_nothing_listens():
    with pytest.raises(UIStartError, match="no answer"):
        wait_until_up(f"http://127.0.0.1:{free_port()}", timeout=0.5)


def test_ui_refuses_a_port_out_of_range(capsys: pytest.CaptureFixture[str]) -> None:
    from agent.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["ui", "--port", "70000"])

    assert exited.value.code == 2
    assert "a port is 1-65535, got 70000" in capsys.readouterr().err


@pytest.mark.slow
def test_ui_prints_its_link_and_sigterm_stops_the_server_too(logged_search, tmp_path) -> None:
    """``layerpilot ui`` starts MLflow in its own session: SIGTERM to the CLI must not leave
    the server listening."""
    import signal
    import subprocess
    import time

    tracker, _, _ = logged_search
    port = free_port()
    cli = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "ui", "--port", str(port),
         "--tracking-uri", tracker.tracking_uri],
        stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    try:
        assert cli.stderr is not None
        line = cli.stderr.readline()  # the link is printed once the server answers
        while line and "MLflow UI:" not in line:
            line = cli.stderr.readline()
        assert f"http://127.0.0.1:{port}/#/experiments/{tracker.experiment_id}/runs" in line
        assert "workflowType=machine_learning" in line
        cli.send_signal(signal.SIGTERM)
        cli.wait(timeout=30)
    finally:
        if cli.poll() is None:
            cli.kill()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) != 0:
                break
        time.sleep(0.2)
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0  # nothing listens any more


def test_a_moved_store_says_why_its_artifacts_do_not_show(tmp_path: Path) -> None:
    import shutil

    from agent.ui import moved_artifacts

    made = tmp_path / "made"
    Tracker(workdir=made).start_search("s", {}, {"name": "w"}, {"accuracy": 1.0}, made)
    assert moved_artifacts(f"sqlite:///{made / 'mlflow.db'}") is None  # where it was made

    moved = tmp_path / "elsewhere"
    shutil.move(made, moved)
    note = moved_artifacts(f"sqlite:///{moved / 'mlflow.db'}")

    assert note is not None and str(made / "mlartifacts") in note
    assert "No Artifacts Recorded" in note
