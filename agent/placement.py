"""Where the driver and its local measurement workers run, and what the driver changes in its
own process for a search — each change undone when the search ends.

A search pins the driver off the cores its workers time on (`pin_driver`) and runs torch with
one thread (`torch_threads`); both are context managers that restore the previous CPU affinity
and thread count on exit, so a notebook or test that runs a search gets its process back as it
was.

Example:
    >>> placement = plan_placement(config)  # doctest: +SKIP
    >>> with torch_threads(1), pin_driver(placement.driver_cpus):  # doctest: +SKIP
    ...     run_the_search(placement)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from agent.config import SearchConfig


@dataclass(frozen=True)
class Placement:
    """The cores of a local search: where workers run and time, and where the driver stays."""

    worker_cpus: list[int] | None = None
    """Cores the workers run on (``None``: not pinned)."""
    measure_cpus: list[int] | None = None
    """Cores a worker moves onto only while it times (several workers; `runners.measure_lock`)."""
    driver_cpus: list[int] | None = None
    """Cores the driver keeps (``None``: leave its affinity alone)."""


NOT_PINNED = Placement()
"""Nothing pinned: Ray executors, latency-free workers, or too few cores."""


def plan_placement(config: SearchConfig) -> Placement:
    """The placement of ``config``'s local workers on the cores this process may use now.

    One worker runs on the last ``threads`` cores and the driver keeps the others. Several
    workers build on the other cores and move onto the last ``threads`` ones only to time (one
    at a time); the driver keeps the building cores. Latency-free (``measure = "flops"``)
    workers are not pinned.
    """
    if not hasattr(os, "sched_getaffinity"):
        return NOT_PINNED
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) <= config.threads:
        return NOT_PINNED
    timing, rest = cpus[-config.threads :], cpus[: -config.threads]
    if config.workers == 1:
        return Placement(worker_cpus=timing, driver_cpus=rest)
    if config.measure == "flops":
        return NOT_PINNED
    return Placement(worker_cpus=rest, measure_cpus=timing, driver_cpus=rest)


@contextmanager
def pin_driver(cpus: list[int] | None) -> Iterator[None]:
    """Run this process on ``cpus`` inside the block; its previous affinity is restored after
    (``None``, or a platform without affinity: nothing changes)."""
    if cpus is None or not hasattr(os, "sched_setaffinity"):
        yield
        return
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, set(cpus))
    try:
        yield
    finally:
        os.sched_setaffinity(0, previous)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run torch's intra-op pool with ``n`` threads inside the block, restored after.

    The driver builds and calibrates in its own process on the cores it keeps; one thread
    keeps it off the cores a worker is timing on.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
