"""``layerpilot runtimes``: the runtimes and whether they can run on this machine."""

from __future__ import annotations

import argparse
from typing import Any

from agent.cli.common import add_json
from agent.cli.console import console, print_json


def add_parser(sub: Any) -> None:
    p = sub.add_parser("runtimes", help="runtimes and whether they can run here")
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.table import Table

    from runners import get_runtime, list_runtimes

    rows: list[dict[str, Any]] = []
    for name in list_runtimes():
        runtime = get_runtime(name)
        rows.append(
            {
                "name": name,
                "precisions": sorted(runtime.precisions),
                "available": runtime.unavailable_reason() is None,
                "reason": runtime.unavailable_reason(),
            }
        )
    if args.json:
        print_json(rows)
        return 0
    table = Table(title="Runtimes")
    for col in ("runtime", "precisions", "available here"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["name"], ", ".join(r["precisions"]), "yes" if r["available"] else f"no: {r['reason']}"
        )
    console().print(table)
    return 0
