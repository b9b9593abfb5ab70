"""``layerpilot profile``: a workload's decision units with FLOPs, params and latency share."""

from __future__ import annotations

import argparse
from typing import Any

from agent.cli.common import add_json, add_workload_args, load_workload, positive_int
from agent.cli.console import console, print_json


def add_parser(sub: Any) -> None:
    p = sub.add_parser("profile", help="decision units: kind, shape, FLOPs, params, latency share")
    add_workload_args(p)
    p.add_argument(
        "--runs", type=positive_int, default=50, help="profiled runs for latency shares (>= 1)"
    )
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.table import Table

    from runners.build import Subject
    from runners.metrics import format_count
    from runners.profile import latency_shares

    wl = load_workload(args)
    subject = Subject.prepare(wl)
    shares = latency_shares(subject.model, wl.example_input, subject.units.names, runs=args.runs)
    rows: list[dict[str, Any]] = [
        {
            "index": u.index,
            "name": u.name,
            "kind": u.kind,
            "shape": u.describe(),
            "flops": u.flops,
            "flops_share": u.flops_share,
            "params": u.params,
            "latency_share": shares.get(u.name, 0.0),
            "coupled_to": u.coupled_to,
            "allowed": sorted(a for a, r in u.allowed.items() if r is None),
            "masked": {a: r for a, r in u.allowed.items() if r is not None},
        }
        for u in subject.units
    ]
    if args.json:
        print_json({"workload": wl.name, "total_flops": subject.units.total_flops, "units": rows})
        return 0
    table = Table(title=f"Decision units of {wl.name} ({len(rows)} units)")
    for col in ("#", "unit", "kind", "shape", "FLOPs", "FLOPs %", "params", "latency %", "actions"):
        table.add_column(
            col,
            justify="right" if col in ("#", "FLOPs", "params") else "left",
            no_wrap=col in ("unit", "shape"),
        )
    for r in rows:
        actions = ", ".join(r["allowed"]) or "-"
        if r["coupled_to"]:
            actions += f" (prune via {r['coupled_to']})"
        table.add_row(
            str(r["index"]),
            r["name"],
            r["kind"],
            r["shape"],
            format_count(r["flops"]),
            f"{100 * r['flops_share']:.1f}",
            format_count(r["params"]),
            f"{100 * r['latency_share']:.1f}",
            actions,
        )
    console().print(table)
    return 0
