"""``layerpilot evaluate``: build one strategy and measure it against the baseline."""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from typing import Any

from agent.cli.common import (
    add_json,
    add_measure_args,
    add_workload_args,
    eval_config,
    load_workload,
    read_strategy,
)
from agent.cli.console import console, print_json


def add_parser(sub: Any) -> None:
    from runners.recovery import RECOVERY_PRESETS

    p = sub.add_parser("evaluate", help="build a strategy and measure it against the baseline")
    add_workload_args(p)
    p.add_argument(
        "--strategy",
        required=True,
        help='strategy JSON file, or inline JSON such as \'{"*": {"precision": "int8"}}\'',
    )
    add_measure_args(p)
    p.add_argument(
        "--recovery",
        default="none",
        choices=list(RECOVERY_PRESETS),
        help="distillation fine-tune of the candidate before it is measured: none (BatchNorm "
        "re-estimation only, the default), short, or full (what export ships)",
    )
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.table import Table

    from runners.build import Subject
    from runners.evaluate import evaluate
    from runners.metrics import format_count
    from runners.recovery import recovery_preset

    strategy = read_strategy(args.strategy)
    config = eval_config(args)
    config = replace(config, build=replace(config.build, recovery=recovery_preset(args.recovery)))
    wl = load_workload(args)
    subject = Subject.prepare(wl)
    started = time.perf_counter()
    result = evaluate(subject, strategy, config)
    data = result.to_dict()
    data["evaluate_seconds"] = time.perf_counter() - started
    data["latency_doubts"] = list(result.latency_doubts)
    if args.json:
        print_json(data)
        return 0
    table = Table(
        title=f"{wl.name}: strategy {data['strategy_key']} on {data['runtime']}, "
        f"{args.recovery} recovery"
    )
    table.add_column("")
    table.add_column("baseline", justify="right")
    table.add_column("optimized", justify="right")
    table.add_row("metric", f"{data['baseline_accuracy']:.2f}", f"{data['accuracy']:.2f}")
    table.add_row("drop (points)", "", f"{data['accuracy_drop']:+.2f}")
    table.add_row(
        "latency median ms",
        f"{data['baseline_latency_ms']:.3f}",
        f"{data['latency_ms']:.3f}",
    )
    table.add_row(
        "latency p90 ms", f"{data['baseline_latency_p90_ms']:.3f}", f"{data['latency_p90_ms']:.3f}"
    )
    table.add_row("speedup (measured)", "1.00x", f"{data['speedup']:.2f}x")
    table.add_row("speedup (FLOP-ideal)", "1.00x", f"{data['ideal_speedup']:.2f}x")
    table.add_row("FLOPs", format_count(data["baseline_flops"]), format_count(data["flops"]))
    table.add_row("params", format_count(data["baseline_params"]), format_count(data["params"]))
    table.add_row(
        "size",
        format_count(data["baseline_size_bytes"]) + "B",
        format_count(data["size_bytes"]) + "B",
    )
    con = console()
    con.print(table)
    info = data["info"]
    con.print(
        f"[dim]{info.get('threads', '?')} thread(s), batch {info.get('batch_size')}, "
        f"spread {100 * data['latency_spread']:.1f}% over {data['latency_runs']} runs, "
        f"{data['evaluate_seconds']:.1f} s[/dim]"
    )
    for doubt in result.latency_doubts:
        con.print(f"[yellow]latency in doubt: {doubt}; time it again on a quieter machine[/yellow]")
    return 0
