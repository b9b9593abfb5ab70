"""``layerpilot workloads``: the built-in workloads with their baseline accuracy and latency."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from agent.cli.common import add_json
from agent.cli.console import console, print_json, stderr_progress


def add_parser(sub: Any) -> None:
    p = sub.add_parser("workloads", help="built-in workloads with baseline accuracy and latency")
    p.add_argument("--no-measure", action="store_true", help="list without measuring")
    p.add_argument("--cache-dir", type=Path, default=None, help="workload cache directory")
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.table import Table

    from envs.workloads import BUILTINS, get_workload, list_workloads
    from envs.workloads.inputs import input_shape
    from runners.build import Subject
    from runners.evaluate import EvalConfig, measure
    from runners.latency import LatencyConfig
    from runners.metrics import format_count
    from search_spaces import Strategy

    rows: list[dict[str, Any]] = []
    config = EvalConfig(latency=LatencyConfig(max_seconds=3.0))
    for name in list_workloads():
        row: dict[str, Any] = {"name": name, "description": BUILTINS[name].description}
        if args.no_measure:  # list only: never trains a workload that is not cached yet
            rows.append(row)
            continue
        wl = get_workload(name, cache_dir=args.cache_dir, progress=stderr_progress(not args.json))
        row |= {
            "input_shape": input_shape(wl.example_input),
            "train_samples": len(wl.train),
            "eval_samples": len(wl.eval),
        }
        m = measure(Subject.prepare(wl), Strategy(), config)
        row |= {
            "accuracy": m.accuracy,
            "latency_ms": m.latency.median_ms,
            "latency_p90_ms": m.latency.p90_ms,
            "flops": m.flops,
            "params": m.params,
            "size_bytes": m.size_bytes,
            "runtime": config.runtime,
            "threads": config.threads,
        }
        rows.append(row)
    if args.json:
        print_json(rows)
        return 0
    table = Table(title="Built-in workloads (baseline, ONNX Runtime CPU, 1 thread, batch 1)")
    for col in (
        "name",
        "input",
        "accuracy %",
        "latency ms (p90)",
        "FLOPs",
        "params",
        "description",
    ):
        table.add_column(col)
    for r in rows:
        measured = "accuracy" in r
        table.add_row(
            r["name"],
            "×".join(map(str, r["input_shape"][1:])) if measured else "-",
            f"{r['accuracy']:.2f}" if measured else "-",
            f"{r['latency_ms']:.3f} ({r['latency_p90_ms']:.3f})" if measured else "-",
            format_count(r["flops"]) if measured else "-",
            format_count(r["params"]) if measured else "-",
            r["description"],
        )
    console().print(table)
    return 0
