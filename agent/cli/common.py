"""Flags and inputs shared by several commands (workload, measurement, ``--json``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.cli.console import stderr_progress
from agent.cli.errors import CliError

if TYPE_CHECKING:
    from envs.workloads.base import Workload
    from runners.evaluate import EvalConfig
    from search_spaces import Strategy


def add_workload_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--workload", help="a built-in workload (`layerpilot workloads` lists them)")
    src.add_argument(
        "--model",
        metavar="MODULE:FUNCTION",
        help="bring your own: a function returning a Workload (`mypkg.models:build` or "
        "`path/to/file.py:build`); see examples/byo_model.py",
    )
    p.add_argument("--seed", type=int, default=0, help="built-in workload training seed")
    p.add_argument("--cache-dir", type=Path, default=None, help="workload cache directory")


def positive_int(text: str) -> int:
    """An integer >= 1 (argparse type)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def thread_count(text: str) -> int:
    """Runtime threads: an integer from 1 to this machine's CPU cores (argparse type). More
    threads than cores only time the scheduler."""
    import os

    value = positive_int(text)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if cores and value > cores:
        raise argparse.ArgumentTypeError(f"{value} threads on a machine with {cores} CPU cores")
    return value


def add_measure_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runtime", default="onnxruntime-cpu", help="runtime (`layerpilot runtimes`)")
    p.add_argument(
        "--threads", type=thread_count, default=1, help="runtime intra-op threads (default 1)"
    )
    p.add_argument("--batch-size", type=int, default=1, help="latency batch size (default 1)")
    p.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="cap on the seconds spent timing each model, warm-up included (default: the "
        "protocol's 30); it bounds each latency measurement, not the command (a search's "
        "length is --time-budget)",
    )


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print machine-readable JSON only")


def load_workload(args: argparse.Namespace) -> Workload:
    """The workload of ``--workload``/``--model`` (training a built-in one if not cached)."""
    from envs.workloads import get_workload, load_workload_spec

    if args.model:
        return load_workload_spec(args.model)
    return get_workload(
        args.workload,
        seed=args.seed,
        cache_dir=args.cache_dir,
        progress=stderr_progress(not getattr(args, "json", False)),
    )


def eval_config(args: argparse.Namespace) -> EvalConfig:
    """The `EvalConfig` of the measurement flags.

    Raises:
        CliError: A flag's value is out of range.
    """
    from runners.evaluate import EvalConfig
    from runners.latency import LatencyConfig

    latency: dict[str, Any] = {"batch_size": args.batch_size}
    if args.max_seconds is not None:
        latency["max_seconds"] = args.max_seconds
    try:
        return EvalConfig(
            runtime=args.runtime, threads=args.threads, latency=LatencyConfig(**latency)
        )
    except (TypeError, ValueError) as exc:
        raise CliError(str(exc)) from exc


def read_strategy(text: str) -> Strategy:
    """``--strategy``: inline JSON (starts with ``{``) or a strategy file."""
    from search_spaces import Strategy

    stripped = text.strip()
    if stripped.startswith("{"):
        return Strategy.from_json(stripped)
    return Strategy.load(text)
