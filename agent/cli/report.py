"""``layerpilot report``: the Pareto plot and table of a search (directory or MLflow run id)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from agent.cli.common import add_json
from agent.cli.console import console, print_json
from agent.cli.errors import CliError


def add_parser(sub: Any) -> None:
    p = sub.add_parser("report", help="Pareto plot and table of a search (directory or run id)")
    p.add_argument("target", help="a search directory, or an MLflow parent run id")
    p.add_argument("--out", type=Path, help="report directory (default <search dir>/report)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI for a run id")
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from agent.report import write_report
    from agent.search_dir import SearchDir

    sdir = SearchDir(args.target)
    if sdir.exists() or sdir.path.exists():
        state = sdir.read_state()  # a plain folder: "not a search directory"
        records = sdir.records()
        baseline = state.baseline or {}
        out = args.out or sdir.report_dir
        title = f"layerpilot search {sdir.name}"
    else:
        from agent.tracking import default_tracking_uri, load_search, records_from_runs

        uri = args.tracking_uri or default_tracking_uri(Path.cwd())
        try:
            runs, baseline = load_search(uri, args.target)
        except Exception as exc:  # MLflow raises its own types for a bad id
            raise CliError(
                f"{args.target!r} is neither a search directory nor an MLflow run id in "
                f"{uri}: {exc}"
            ) from None
        records = records_from_runs(runs)
        out = args.out or Path(f"report-{args.target[:12]}")
        title = f"layerpilot search (MLflow run {args.target})"
    path = write_report(records, baseline, out, title=title)
    if args.json:
        print_json(_summary(records, path))
        return 0
    console().print(path.read_text())
    console().print(f"[dim]written: {path} and {path.parent / 'pareto.png'}[/dim]")
    return 0


def _summary(records: list[Any], path: Path) -> dict[str, Any]:
    """``report --json``: where the report is, the best within 1 point and the front, each
    with the fidelity it was measured at."""
    from agent.report import best_at_drop, deployed_records, pareto_records

    shown = deployed_records(records)
    best = best_at_drop(shown)

    def row(r: Any) -> dict[str, Any]:
        return {"index": r.index, "fidelity": r.fidelity, "accuracy": r.accuracy,
                "accuracy_drop": r.accuracy_drop, "speedup": r.speedup}  # fmt: skip

    return {
        "report": str(path),
        "plot": str(path.parent / "pareto.png"),
        "candidates": len(records),
        "best_at_1pt": None if best is None else row(best),
        "front": [row(r) for r in pareto_records(shown)],
    }
