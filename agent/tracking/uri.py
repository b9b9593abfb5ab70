"""Where layerpilot's MLflow store lives: the default URI, its artifact root, artifact reads.

The default store is embedded: ``sqlite:///<workdir>/mlflow.db`` with artifacts in
``<workdir>/mlartifacts`` — MLflow 3 refuses the old ``./mlruns`` file store. ``layerpilot ui``
serves the same two paths (see :mod:`agent.ui`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname


def default_tracking_uri(workdir: Path | None = None) -> str:
    """The embedded store: ``sqlite:///<abs workdir>/mlflow.db``.

    Example:
        >>> default_tracking_uri(Path("/tmp/w"))
        'sqlite:////tmp/w/mlflow.db'
    """
    return f"sqlite:///{Path(workdir or Path.cwd()).resolve() / 'mlflow.db'}"


def artifact_root(tracking_uri: str) -> Path | None:
    """Where a local SQLite store keeps artifacts: ``mlartifacts/`` beside the database.

    ``None`` for other stores (a tracking server decides its own artifact location).

    Example:
        >>> artifact_root("sqlite:////tmp/w/mlflow.db")
        PosixPath('/tmp/w/mlartifacts')
    """
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix) or tracking_uri == prefix:
        return None
    database = Path(tracking_uri[len(prefix) :].split("?", 1)[0])
    return database.resolve().parent / "mlartifacts"


def read_json_artifact(artifact_uri: str, name: str) -> dict[str, Any] | None:
    """The JSON object ``name`` under a run's ``artifact_uri``; ``None`` if absent or unreadable.

    A local store's file is read directly (no download machinery, no temporary copy); other
    stores go through ``mlflow.artifacts.load_text``.
    """
    uri = f"{artifact_uri.rstrip('/')}/{name}"
    try:
        parsed = urlparse(uri)
        if parsed.scheme in ("", "file"):
            text = Path(url2pathname(parsed.path)).read_text()
        else:
            from mlflow.artifacts import load_text

            text = load_text(uri)
        data = json.loads(text)
    except Exception:  # missing (an older run) or unreadable: the caller has a fallback
        return None
    return data if isinstance(data, dict) else None


@contextmanager
def store_setup_lock(tracking_uri: str) -> Iterator[None]:
    """Hold an exclusive lock beside a local SQLite store while it is opened for the first time.

    MLflow creates and migrates the schema on first use, and creates the experiment if it is
    missing; two searches started at once on a fresh store would race there (one dies in
    alembic's migration). Other stores need no lock: a server serialises its own setup.
    """
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix) or tracking_uri == prefix:
        yield
        return
    import fcntl

    database = Path(tracking_uri[len(prefix) :].split("?", 1)[0])
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(database.name + ".lock"), "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def using_tracking_uri(uri: str) -> Iterator[None]:
    """Make ``uri`` the process-wide tracking URI for the block, and restore the previous one.

    ``mlflow.<flavor>.log_model`` reads only the process-wide URI; setting it around the call
    keeps a :class:`~agent.tracking.Tracker` from changing global MLflow state.
    """
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    with _use_tracking_uri(uri):
        yield


__all__ = [
    "artifact_root",
    "default_tracking_uri",
    "read_json_artifact",
    "store_setup_lock",
    "using_tracking_uri",
]
