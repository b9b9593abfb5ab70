"""The MLflow UI over layerpilot's store: ``mlflow server`` on 127.0.0.1, same Python.

The server reads the store :class:`agent.tracking.Tracker` writes: the SQLite database and, for
experiments created from the UI, ``mlartifacts/`` beside it (layerpilot's own experiment already
records that location). Runs of a search open at ``http://127.0.0.1:PORT/#/experiments/ID/runs``.

Example:
    >>> server = serve_ui("sqlite:////abs/runs/mlflow.db", port=5055)  # doctest: +SKIP
    >>> wait_until_up("http://127.0.0.1:5055", timeout=60)  # doctest: +SKIP
    >>> server.terminate()  # doctest: +SKIP
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from agent.tracking import artifact_root


class UIStartError(RuntimeError):
    """The MLflow server exited or did not answer in time."""


def ui_command(tracking_uri: str, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The ``mlflow server`` command line for ``tracking_uri`` (run with this interpreter)."""
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        tracking_uri,
        "--host",
        host,
        "--port",
        str(port),
        # One worker: a local viewer over SQLite, on machines whose cores measure latency.
        "--workers",
        "1",
    ]
    root = artifact_root(tracking_uri)
    if root is not None:
        command += ["--default-artifact-root", root.as_uri(), "--no-serve-artifacts"]
    return command


def serve_ui(
    tracking_uri: str,
    host: str = "127.0.0.1",
    port: int = 5000,
    quiet: bool = False,
) -> subprocess.Popen[bytes]:
    """Start the MLflow server in the background and return its process (not waiting for it).

    The server runs in its own process group, so ``os.killpg(proc.pid, SIGTERM)`` stops its
    workers too; :func:`stop_ui` does that.

    Args:
        tracking_uri: The store to show, e.g. ``sqlite:////abs/path/mlflow.db``.
        host: Interface to bind; keep the default unless you know who can reach the machine.
        port: Port to listen on.
        quiet: Discard the server's console output.
    """
    env = dict(os.environ)
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # a local viewer phones no one
    output = subprocess.DEVNULL if quiet else None
    return subprocess.Popen(
        ui_command(tracking_uri, host, port),
        env=env,
        stdout=subprocess.DEVNULL if quiet else sys.stderr,  # stdout is `ui --json`'s
        stderr=output,
        start_new_session=True,
    )


def wait_until_up(
    url: str, timeout: float = 60.0, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Block until ``url`` answers ``/health`` (raises :class:`UIStartError` after ``timeout``).

    With ``process``, fail as soon as the server exits instead of waiting out the timeout.
    """
    health = url.rstrip("/") + "/health"
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise UIStartError(f"the MLflow server exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(health, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last_error = exc
        time.sleep(0.25)
    raise UIStartError(f"no answer from {health} within {timeout:.0f}s (last error: {last_error})")


def stop_ui(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Stop a server started by :func:`serve_ui`, and its worker processes."""
    import signal

    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout)
    except ProcessLookupError:
        pass


def run_ui(
    tracking_uri: str,
    host: str = "127.0.0.1",
    port: int = 5000,
    announce: Callable[[str], None] | None = None,
) -> int:
    """Serve the UI in the foreground until Ctrl-C or SIGTERM; return the server's exit code.

    Once the server answers, ``announce`` receives the link to the runs of layerpilot's
    experiment (or the server's root when the store has none yet). The server is stopped
    however this returns: it runs in its own session, so nothing else would stop it.
    """
    import signal

    def terminate(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    process = serve_ui(tracking_uri, host, port)
    try:
        base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
        wait_until_up(base, timeout=120, process=process)
        if announce is not None:
            announce(landing_url(tracking_uri, base))
        return process.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        stop_ui(process)
        signal.signal(signal.SIGTERM, previous)


def landing_url(tracking_uri: str, base: str, experiment: str = "layerpilot") -> str:
    """Where ``layerpilot ui`` sends the user: the saved view of the latest search (its
    candidates within the bound, fastest first; `agent.tracking.Tracker.save_view`), else the
    experiment's runs table, in the classic (machine-learning) view; ``base`` when the store
    has no such experiment yet."""
    from mlflow import MlflowClient

    from agent.tracking.keys import KIND_TAG, VIEW_TAG_PREFIX

    try:
        client = MlflowClient(tracking_uri)
        found = client.get_experiment_by_name(experiment)
        latest = (
            []
            if found is None
            else client.search_runs(
                [found.experiment_id],
                f"tags.`{KIND_TAG}` = 'search'",
                order_by=["attributes.start_time DESC"],
                max_results=1,
            )
        )
    except Exception:  # an unreadable store: the root still opens
        found, latest = None, []
    if found is None:
        return base
    runs = f"{base}/#/experiments/{found.experiment_id}/runs?workflowType=machine_learning"
    if latest and f"{VIEW_TAG_PREFIX}{latest[0].info.run_id}" in found.tags:
        return f"{runs}&viewStateShareKey={latest[0].info.run_id}"
    return runs


def moved_artifacts(tracking_uri: str, experiment: str = "layerpilot") -> str | None:
    """Why the UI will show "No Artifacts Recorded" for this store's runs, or None.

    Runs record their artifact location as an absolute path; a SQLite store copied or moved
    elsewhere still points at the old ``mlartifacts/``. When that folder is gone, say where
    the artifacts were recorded and where they would be now.
    """
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    from mlflow import MlflowClient

    root = artifact_root(tracking_uri)
    if root is None or not (root.parent / database_name(tracking_uri)).is_file():
        return None  # no store yet: nothing recorded, and opening one would create it
    try:
        found = MlflowClient(tracking_uri).get_experiment_by_name(experiment)
    except Exception:
        return None
    if found is None or not found.artifact_location.startswith("file:"):
        return None
    recorded = Path(url2pathname(urlparse(found.artifact_location).path))
    if recorded == root or recorded.exists():
        return None
    return (
        f"the runs' artifacts were recorded under {recorded}, which is not there (the store "
        f"was moved or copied?): the UI shows 'No Artifacts Recorded' for them. The database "
        f"and its files are still readable with `layerpilot report` / `export`; to browse the "
        f"artifacts, run `layerpilot ui` where the store was made, or put {root.name}/ back at "
        f"{recorded.parent}."
    )


def database_name(tracking_uri: str) -> str:
    """The file name of a ``sqlite:///`` store's database."""
    return Path(tracking_uri.removeprefix("sqlite:///").split("?", 1)[0]).name


def runs_url(host: str, port: int, experiment_id: str) -> str:
    """The direct link to an experiment's runs table."""
    return f"http://{host}:{port}/#/experiments/{experiment_id}/runs"


__all__ = [
    "UIStartError",
    "landing_url",
    "moved_artifacts",
    "run_ui",
    "runs_url",
    "serve_ui",
    "stop_ui",
    "ui_command",
    "wait_until_up",
]
