"""One latency measurement at a time per host, on its own cores.

Several evaluation workers may share a machine (``--workers N``, or several Ray actors on one
node). They build candidates and score accuracy in parallel, but two timings taken at once on
one machine disturb each other, so every timed section runs under a host-wide lock: an
``flock`` on ``$LAYERPILOT_MEASURE_LOCK`` (default ``<tmp>/layerpilot-measure-<uid>.lock``).
Every worker of one user on one host, local process or Ray actor, takes the same lock. A
worker may also be given *measurement cores*: it moves onto them for the timed section only
(and builds on the others), so the measured process has its cores to itself.

Example:
    >>> with exclusive_measurement() as waited_s:
    ...     stats = measure_compiled(compiled, example, config)
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

LOCK_ENV = "LAYERPILOT_MEASURE_LOCK"

_measure_cpus: set[int] | None = None


def lock_path() -> Path:
    """The host-wide lock file (``$LAYERPILOT_MEASURE_LOCK`` overrides it)."""
    override = os.environ.get(LOCK_ENV)
    if override:
        return Path(override)
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"layerpilot-measure-{uid}.lock"


def set_measure_cpus(cpus: list[int] | None) -> None:
    """Cores this process moves onto while it times (None: it stays where it is)."""
    global _measure_cpus
    _measure_cpus = set(cpus) if cpus else None


@contextlib.contextmanager
def exclusive_measurement() -> Iterator[float]:
    """Hold the host's measurement lock (on the measurement cores, if set); yields the seconds
    spent waiting for it."""
    start = time.perf_counter()
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock (one worker per machine is then the rule)
        fcntl = None  # type: ignore[assignment]
    path = lock_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    previous: set[int] | None = None
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        waited = time.perf_counter() - start
        if _measure_cpus is not None and hasattr(os, "sched_setaffinity"):
            previous = os.sched_getaffinity(0)
            os.sched_setaffinity(0, _measure_cpus)
        yield waited
    finally:
        if previous is not None:
            os.sched_setaffinity(0, previous)
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
