"""The ``search``, ``report`` and ``ui`` commands (registered by `agent.cli`)."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn


def add_commands(sub: Any) -> None:
    from agent.config import AGENTS
    from envs.reward import REWARD_MODES

    p = sub.add_parser(
        "search",
        help="search per-layer strategies with an agent; every candidate measured and tracked",
        description="Run a search. Flags override the --config file; the file overrides the "
        "defaults (digits-resnet, ppo, budget 150, tradeoff reward with lam 0.5).",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--workload", help="built-in workload (default digits-resnet)")
    src.add_argument("--model", metavar="MODULE:FUNCTION", help="bring-your-own workload")
    p.add_argument("--config", type=Path, help="search config file (.toml, .yaml or .json)")
    p.add_argument("--seed", type=int, help="built-in workload training seed")
    p.add_argument("--cache-dir", type=Path, help="workload and probe-table cache directory")
    p.add_argument("--agent", choices=AGENTS, help="search agent (default ppo)")
    p.add_argument("--agent-seed", type=int, help="agent seed (default 0)")
    p.add_argument("--budget", type=int, help="candidates to evaluate (default 150)")
    p.add_argument(
        "--actions",
        help="comma-separated actions to search (default: prune,lowrank,precision,skip; "
        "add dynamic_skip for per-input gating, which trains a controller per candidate)",
    )
    p.add_argument(
        "--recovery",
        choices=("none", "short"),
        help="per-candidate accuracy recovery: none (BatchNorm re-estimation, default) or short "
        "(plus a 40-step distillation fine-tune)",
    )
    p.add_argument("--reward", choices=REWARD_MODES, help="reward mode (default tradeoff)")
    p.add_argument("--lam", type=float, help="tradeoff: accuracy points per doubling of speed")
    p.add_argument("--target-speedup", type=float, help="target mode: speedup to reach")
    p.add_argument("--max-drop", type=float, help="max-drop mode: accuracy-drop bound (points)")
    p.add_argument("--runtime", help="runtime (`layerpilot runtimes`; default onnxruntime-cpu)")
    p.add_argument("--threads", type=int, help="runtime intra-op threads (default 1)")
    p.add_argument("--batch-size", type=int, help="latency batch size (default 1)")
    p.add_argument("--out", type=Path, help="search directory (default: new folder in ./runs)")
    p.add_argument("--cache", type=Path, help="candidate cache file shared between searches")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///./mlflow.db)")
    p.add_argument("--experiment", help="MLflow experiment name (default layerpilot)")
    p.add_argument("--executor", choices=("local", "ray"), help="where candidates are measured")
    p.add_argument(
        "--address",
        help="join this Ray cluster (auto, HOST:PORT or ray://HOST:PORT); candidates are "
        "measured on all its nodes. Without it a local Ray instance starts when needed",
    )
    p.add_argument(
        "--workers",
        type=int,
        help="evaluation workers per machine / Ray node (default 1); their timings take turns",
    )
    p.add_argument(
        "--measure",
        choices=("latency", "flops"),
        help="latency: time every candidate (default); flops: latency-free, speed from FLOPs",
    )
    p.add_argument(
        "--resume",
        type=Path,
        metavar="DIR",
        help="continue the killed or interrupted search in DIR (its config; --budget may raise "
        "its budget, --address/--workers/--timeout may change where it runs)",
    )
    p.add_argument("--timeout", type=float, help="per-candidate timeout in seconds (300)")
    p.add_argument("--no-probes", action="store_true", help="ppo: skip the measured cost table")
    p.add_argument("--no-log-model", action="store_true", help="do not log the best model")
    p.add_argument("--json", action="store_true", help="print the summary as JSON only")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("report", help="Pareto plot and table of a search (directory or run id)")
    p.add_argument("target", help="a search directory, or an MLflow parent run id")
    p.add_argument("--out", type=Path, help="report directory (default <search dir>/report)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI for a run id")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("ui", help="MLflow UI over this project's runs, on 127.0.0.1")
    p.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; anything else exposes the runs, "
        "unauthenticated, to whoever can reach it)",
    )
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///./mlflow.db)")
    p.set_defaults(func=cmd_ui)


#: Flags that may change where and how long a resumed search runs (the rest is its config).
RESUME_FLAGS = ("budget", "address", "workers", "timeout", "executor")


def resume_config(args: argparse.Namespace) -> Any:
    """The config of the search in ``--resume DIR``, with the flags `RESUME_FLAGS` allows."""
    from agent.cli import CliError
    from agent.config import ConfigError
    from agent.search import ResumeError, resume_state

    ignored = {"resume", "json", "func", "command", *RESUME_FLAGS}
    given = sorted(
        f"--{k.replace('_', '-')}"
        for k, v in vars(args).items()
        if k not in ignored and v not in (None, False)
    )
    if given:
        raise CliError(
            f"--resume continues a search with its own config; {', '.join(given)} cannot change "
            f"it (allowed: {', '.join('--' + f for f in RESUME_FLAGS)})"
        )
    try:
        config, _ = resume_state(args.resume)
        executor = args.executor or ("ray" if args.address else None)
        return config.with_overrides(
            budget=args.budget,
            address=args.address,
            executor=executor,
            workers=args.workers,
            timeout_s=args.timeout,
        )
    except (ResumeError, ConfigError) as exc:
        raise CliError(str(exc)) from None


def search_config(args: argparse.Namespace) -> Any:
    """The `SearchConfig` of the flags over the ``--config`` file over the defaults."""
    from agent.cli import CliError
    from agent.config import ConfigError, SearchConfig, load_config
    from envs.reward import RewardConfig, RewardError

    if args.resume is not None:
        return resume_config(args)
    try:
        base = load_config(args.config) if args.config else SearchConfig()
        if args.workload or args.model:
            base = SearchConfig(**{**base.__dict__, "workload": args.workload, "model": args.model})
        mode = args.reward
        if mode is None and args.target_speedup is not None:
            mode = "target"
        r = base.reward
        reward = RewardConfig(
            mode=mode or r.mode,
            lam=r.lam if args.lam is None else args.lam,
            target_speedup=r.target_speedup if args.target_speedup is None else args.target_speedup,
            max_drop=r.max_drop if args.max_drop is None else args.max_drop,
        )
        executor = args.executor or ("ray" if args.address else None)
        return base.with_overrides(
            seed=args.seed,
            cache_dir=args.cache_dir,
            agent=args.agent,
            agent_seed=args.agent_seed,
            budget=args.budget,
            actions=None
            if args.actions is None
            else tuple(a.strip() for a in args.actions.split(",") if a.strip()),
            reward=reward,
            recovery=args.recovery,
            runtime=args.runtime,
            threads=args.threads,
            batch_size=args.batch_size,
            out=args.out,
            cache=args.cache,
            tracking_uri=args.tracking_uri,
            experiment=args.experiment,
            executor=executor,
            address=args.address,
            workers=args.workers,
            measure=args.measure,
            timeout_s=args.timeout,
            probes=False if args.no_probes else None,
            log_model=False if args.no_log_model else None,
        )
    except (ConfigError, RewardError) as exc:
        raise CliError(str(exc)) from None


def _fmt(x: float, spec: str = ".2f", suffix: str = "") -> str:
    return (
        "–"
        if x is None or (isinstance(x, float) and not math.isfinite(x))
        else f"{x:{spec}}{suffix}"
    )


def _json_stdout() -> TextIO:
    """Point file descriptor 1 at stderr for the rest of the process, so that nothing written
    there (by Ray or its C++ core, even at exit) can corrupt ``--json``; returns a file on the
    real stdout for the JSON itself."""
    sys.stdout.flush()
    real = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    return real


def cmd_search(args: argparse.Namespace) -> int:
    from agent.cli import _console
    from agent.search import SearchProgress, run_search

    config = search_config(args)
    json_out = _json_stdout() if args.json else None
    err = Console(stderr=True)
    columns = (
        TextColumn("[bold]{task.fields[phase]}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} candidates"),
        TextColumn("best reward {task.fields[reward]}"),
        TextColumn("best speedup @≤1pt {task.fields[speedup]}"),
        TimeElapsedColumn(),
        TextColumn("[dim]{task.fields[detail]}"),
    )
    with Progress(*columns, console=err, disable=args.json, transient=False) as bar:
        task = bar.add_task(
            "search", total=config.budget, phase="starting", reward="–", speedup="–", detail=""
        )

        def show(p: SearchProgress) -> None:
            bar.update(
                task,
                completed=p.evaluated,
                phase=p.phase,
                reward=_fmt(p.best_reward, ".3f"),
                speedup=_fmt(p.best_speedup_1pt, ".2f", "x"),
                detail=p.detail,
            )

        result = run_search(config, show, resume=args.resume is not None)
    summary = {**result.summary, "out": str(result.out), "parent_run_id": result.parent_run_id}
    if json_out is not None:
        json_out.write(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
        json_out.flush()
    else:
        con = _console()
        s = result.summary
        con.print(
            f"{'interrupted' if result.interrupted else 'done'}: {s['candidates']} candidates "
            f"({s['failed']} failed) in {s['wall_seconds']:.0f} s — best speedup at ≤1 pt drop "
            f"{_fmt(s['best_speedup_at_1pt'], '.2f', 'x')}, hypervolume {s['hypervolume']:.3f}, "
            f"overhead {100 * s['overhead_share']:.1f} % of wall time"
        )
        con.print(
            f"search directory: {result.out}  (report: {result.out / 'report' / 'report.md'})"
        )
        con.print(f"MLflow parent run: {result.parent_run_id}  (`layerpilot ui` to browse)")
    return 130 if result.interrupted else 0


def cmd_report(args: argparse.Namespace) -> int:
    from agent.cli import CliError, _console
    from agent.report import load_records, records_from_runs, write_report

    target = Path(args.target)
    if (target / "search.json").exists():
        state = json.loads((target / "search.json").read_text())
        records = load_records(target)
        baseline = state.get("baseline") or {}
        out = args.out or target / "report"
        title = f"layerpilot search {target.name}"
    elif target.exists():
        raise CliError(f"{target} is not a search directory (no search.json in it)")
    else:
        from agent.tracking import default_tracking_uri, load_search

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
    _console().print(path.read_text())
    _console().print(f"[dim]written: {path} and {path.parent / 'pareto.png'}[/dim]")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from agent.tracking import default_tracking_uri
    from agent.ui import run_ui

    uri = args.tracking_uri or default_tracking_uri(Path.cwd())
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        Console(stderr=True).print(
            f"[yellow]warning:[/yellow] the MLflow UI listens on {args.host}: anyone who can "
            "reach it can read and change these runs (it has no login)."
        )
    return int(run_ui(uri, host=args.host, port=args.port) or 0)
