"""The ``layerpilot`` command line.

Every command that prints results takes ``--json`` for a machine-readable form with stable keys.
Bad input ends with ``error: <what is wrong>`` on stderr and exit code 2; nothing is half-written.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from runners.metrics import format_count

EXIT_USAGE = 2


class CliError(Exception):
    """A user-facing error: printed as ``error: ...``, exit code 2."""


# --------------------------------------------------------------------------------------------
# shared pieces


def _add_workload_args(p: argparse.ArgumentParser) -> None:
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


def _add_measure_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runtime", default="onnxruntime-cpu", help="runtime (`layerpilot runtimes`)")
    p.add_argument("--threads", type=int, default=1, help="runtime intra-op threads (default 1)")
    p.add_argument("--batch-size", type=int, default=1, help="latency batch size (default 1)")
    p.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="cap on timing seconds per model (default: the protocol's)",
    )


def _add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print machine-readable JSON only")


def _stderr_progress(enabled: bool) -> Callable[[str], None] | None:
    if not enabled:
        return None
    err = Console(stderr=True)
    return lambda msg: err.print(f"[dim]{msg}[/dim]")


def _load_workload(args: argparse.Namespace) -> Any:
    from envs.workloads import get_workload, load_workload_spec

    if args.model:
        return load_workload_spec(args.model)
    return get_workload(
        args.workload,
        seed=args.seed,
        cache_dir=args.cache_dir,
        progress=_stderr_progress(not getattr(args, "json", False)),
    )


def _eval_config(args: argparse.Namespace) -> Any:
    from runners.evaluate import EvalConfig
    from runners.latency import LatencyConfig

    latency = {"batch_size": args.batch_size}
    if args.max_seconds is not None:
        latency["max_seconds"] = args.max_seconds
    try:
        return EvalConfig(
            runtime=args.runtime, threads=args.threads, latency=LatencyConfig(**latency)
        )
    except (TypeError, ValueError) as exc:
        raise CliError(str(exc)) from exc


def _read_strategy(text: str) -> Any:
    from search_spaces import Strategy

    stripped = text.strip()
    if stripped.startswith("{"):
        return Strategy.from_json(stripped)
    return Strategy.load(text)


def _console() -> Console:
    """Stdout console; wide when piped (rich would fold tables to 80 columns)."""
    return Console(width=None if sys.stdout.isatty() else 160)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


# --------------------------------------------------------------------------------------------
# commands


def cmd_workloads(args: argparse.Namespace) -> int:
    from envs.workloads import BUILTINS, get_workload, list_workloads
    from runners.build import Subject
    from runners.evaluate import EvalConfig, measure
    from runners.latency import LatencyConfig
    from search_spaces import Strategy

    rows: list[dict[str, Any]] = []
    config = EvalConfig(latency=LatencyConfig(max_seconds=3.0))
    for name in list_workloads():
        row: dict[str, Any] = {"name": name, "description": BUILTINS[name].description}
        if args.no_measure:  # list only: never trains a workload that is not cached yet
            rows.append(row)
            continue
        wl = get_workload(name, cache_dir=args.cache_dir, progress=_stderr_progress(not args.json))
        row |= {
            "input_shape": list(wl.example_input.shape),
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
        _print_json(rows)
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
    _console().print(table)
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from runners.build import Subject
    from runners.profile import latency_shares

    wl = _load_workload(args)
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
        _print_json({"workload": wl.name, "total_flops": subject.units.total_flops, "units": rows})
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
    _console().print(table)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from runners.build import Subject
    from runners.evaluate import evaluate

    strategy = _read_strategy(args.strategy)
    config = _eval_config(args)
    wl = _load_workload(args)
    subject = Subject.prepare(wl)
    started = time.perf_counter()
    result = evaluate(subject, strategy, config)
    data = result.to_dict()
    data["evaluate_seconds"] = time.perf_counter() - started
    if args.json:
        _print_json(data)
        return 0
    table = Table(title=f"{wl.name}: strategy {data['strategy_key']} on {data['runtime']}")
    table.add_column("")
    table.add_column("baseline", justify="right")
    table.add_column("optimized", justify="right")
    table.add_row("accuracy %", f"{data['baseline_accuracy']:.2f}", f"{data['accuracy']:.2f}")
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
    console = _console()
    console.print(table)
    info = data["info"]
    console.print(
        f"[dim]{info.get('threads', '?')} thread(s), batch {info.get('batch_size')}, "
        f"spread {100 * data['latency_spread']:.1f}% over {data['latency_runs']} runs, "
        f"{data['evaluate_seconds']:.1f} s[/dim]"
    )
    return 0


def cmd_runtimes(args: argparse.Namespace) -> int:
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
        _print_json(rows)
        return 0
    table = Table(title="Runtimes")
    for col in ("runtime", "precisions", "available here"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["name"], ", ".join(r["precisions"]), "yes" if r["available"] else f"no: {r['reason']}"
        )
    _console().print(table)
    return 0


# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="layerpilot",
        description="Search, layer by layer, how to make a trained network fast while it stays "
        "accurate — every candidate built and measured for real.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("workloads", help="built-in workloads with baseline accuracy and latency")
    p.add_argument("--no-measure", action="store_true", help="list without measuring")
    p.add_argument("--cache-dir", type=Path, default=None, help="workload cache directory")
    _add_json(p)
    p.set_defaults(func=cmd_workloads)

    p = sub.add_parser("profile", help="decision units: kind, shape, FLOPs, params, latency share")
    _add_workload_args(p)
    p.add_argument("--runs", type=int, default=50, help="profiled runs for latency shares")
    _add_json(p)
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("evaluate", help="build a strategy and measure it against the baseline")
    _add_workload_args(p)
    p.add_argument(
        "--strategy",
        required=True,
        help='strategy JSON file, or inline JSON such as \'{"*": {"precision": "int8"}}\'',
    )
    _add_measure_args(p)
    _add_json(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("runtimes", help="runtimes and whether they can run here")
    _add_json(p)
    p.set_defaults(func=cmd_runtimes)

    from agent.cli_search import add_commands
    from agent.export import add_command

    add_commands(sub)
    add_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from agent.search import ResumeError
    from envs.workloads import UnknownWorkloadError, WorkloadCacheError, WorkloadSpecError
    from runners import UnknownRuntimeError
    from runners.base import RuntimeUnavailableError, UnsupportedPrecisionError
    from runners.export import ExportError
    from runners.onnxruntime import MissingCalibrationError, PrecisionMappingError
    from search_spaces import StrategyError

    user_errors: tuple[type[BaseException], ...] = (
        CliError,
        ResumeError,
        StrategyError,
        UnknownWorkloadError,
        WorkloadSpecError,
        WorkloadCacheError,
        UnknownRuntimeError,
        RuntimeUnavailableError,
        UnsupportedPrecisionError,
        PrecisionMappingError,
        MissingCalibrationError,
        ExportError,
    )
    try:
        return int(args.func(args))
    except user_errors as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        from rich.markup import escape

        Console(stderr=True).print(
            f"[bold red]error:[/bold red] {escape(message)}", highlight=False
        )
        return EXIT_USAGE
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted")
        return 130


if __name__ == "__main__":
    # run the imported module, not this ``__main__`` copy: helpers such as `agent.cli_search`
    # import `agent.cli`, and its error classes must be the ones `main` catches
    from agent.cli import main as _main

    sys.exit(_main())
