"""``layerpilot search``: run (or ``--resume``) a search with a live progress bar."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.cli.common import positive_int, thread_count
from agent.cli.console import console, err_console, fmt, json_stdout
from agent.cli.errors import EXIT_INTERRUPTED, CliError

if TYPE_CHECKING:
    from agent.config import SearchConfig

RESUME_FLAGS = ("budget", "time_budget", "address", "workers", "timeout", "executor")
"""Flags that may change where and how long a resumed search runs (the rest is its config)."""


class ActionsOption(argparse.Action):
    """``--actions``: a plain string option whose help lists the registered actions.

    The help is read from the action registry only when it is shown: importing the registry
    imports torch, which every other command would then pay for.
    """

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, values)

    @property  # type: ignore[override]
    def help(self) -> str:
        from search_spaces.actions import ACTIONS, default_actions

        defaults = default_actions()
        opt_in = [
            f"{name} ({ACTIONS[name].summary})" if ACTIONS[name].summary else name
            for name in sorted(set(ACTIONS) - set(defaults))
        ]
        text = f"comma-separated actions to search (default: {','.join(defaults)}"
        return text + (f"; add {'; '.join(opt_in)})" if opt_in else ")")

    @help.setter
    def help(self, value: str | None) -> None:
        pass  # argparse sets it in __init__; the registry answers instead


def add_parser(sub: Any) -> None:
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
    p.add_argument("--budget", type=int, help="candidates to propose (default 150)")
    p.add_argument(
        "--time-budget",
        type=duration,
        metavar="DURATION",
        help="wall time for the whole search, e.g. 20m, 1h30m, 900 (seconds); proposals stop "
        "in time to confirm the front at full recovery",
    )
    p.add_argument("--actions", action=ActionsOption)
    p.add_argument(
        "--fidelities",
        metavar="LEVELS",
        help="recovery levels a candidate climbs, cheapest first (default none,short,full: "
        "BatchNorm re-estimation, 40 and 400 distillation steps); the last is what is deployed",
    )
    p.add_argument(
        "--recovery",
        choices=("none", "short", "full"),
        help="one fidelity only: rank every candidate at this recovery level",
    )
    p.add_argument("--eta", type=int, help="promotion rate: the best 1/eta move up (default 4)")
    p.add_argument("--reward", choices=REWARD_MODES, help="reward mode (default tradeoff)")
    p.add_argument("--lam", type=float, help="tradeoff: accuracy points per doubling of speed")
    p.add_argument("--target-speedup", type=float, help="target mode: speedup to reach")
    p.add_argument(
        "--max-drop",
        type=float,
        help="the accuracy-drop bound in points (default 1): what promotion to the deployed "
        "level and the confirmations aim within, and the max-drop mode's bound",
    )
    p.add_argument("--runtime", help="runtime (`layerpilot runtimes`; default onnxruntime-cpu)")
    p.add_argument(
        "--threads",
        type=positive_int,
        help="runtime intra-op threads per measurement (default 1; at most this machine's "
        "cores unless --address names a cluster)",
    )
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
    p.add_argument(
        "--no-seeds",
        action="store_true",
        help="do not measure the hand pipeline's uniform strategies before the agent proposes",
    )
    p.add_argument("--no-log-model", action="store_true", help="do not log the best model")
    p.add_argument("--json", action="store_true", help="print the summary as JSON only")
    p.set_defaults(func=run)


def resume_config(args: argparse.Namespace) -> SearchConfig:
    """The config of the search in ``--resume DIR``, with the flags `RESUME_FLAGS` allows.

    Raises:
        CliError: A flag that would change the search was given.
        agent.resume.ResumeError: DIR cannot be resumed.
    """
    from agent.resume import ResumeError, resume_state

    try:
        config, _ = resume_state(args.resume)
    except ResumeError as exc:  # the flags are wrong whatever the directory holds: say so first
        config, unreadable = None, exc
    ignored = {"resume", "json", "func", "command", *RESUME_FLAGS}
    recorded = {} if config is None else config.to_dict()
    given = sorted(
        f"--{k.replace('_', '-')}"
        for k, v in vars(args).items()
        if k not in ignored
        and v is not None
        and v is not False  # a store_true flag left off; 0 is a value (`0 == False`)
        and not (k in recorded and _same(recorded[k], v))  # the recorded value: no change
    )
    if given:
        raise CliError(
            f"--resume continues a search with its own config; {', '.join(given)} cannot change "
            f"it (allowed: {', '.join('--' + f for f in RESUME_FLAGS)})"
        )
    if config is None:
        raise unreadable
    executor = args.executor or ("ray" if args.address else None)
    return config.with_overrides(
        budget=args.budget,
        address=args.address,
        executor=executor,
        workers=args.workers,
        timeout_s=args.timeout,
        time_budget=args.time_budget,
    )


def _same(recorded: object, given: object) -> bool:
    """Whether a flag's value is the one the search recorded (paths compared as text)."""
    if isinstance(given, Path):
        given = str(given)
    return recorded == given


def duration(text: str) -> float:
    """Seconds in ``text``: ``900``, ``90s``, ``20m``, ``1h30m`` (argparse type).

    Example:
        >>> duration("1h30m"), duration("20m"), duration("45")
        (5400.0, 1200.0, 45.0)
    """
    import re

    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "": 1.0}
    parts = re.fullmatch(r"\s*((?:\d+(?:\.\d+)?[hms]\s*)+|\d+(?:\.\d+)?)\s*", text)
    if parts is None:
        raise argparse.ArgumentTypeError(
            f"not a duration: {text!r} (write e.g. 900, 90s, 20m or 1h30m)"
        )
    seconds = sum(
        float(number) * units[unit]
        for number, unit in re.findall(r"(\d+(?:\.\d+)?)([hms]?)", parts.group(1))
    )
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"a duration must be > 0, got {text!r}")
    return seconds


def fidelities(args: argparse.Namespace) -> tuple[str, ...] | None:
    """The fidelity schedule the flags ask for (None: the config's)."""
    if args.fidelities is not None and args.recovery is not None:
        raise CliError("give --fidelities or --recovery, not both")
    if args.recovery is not None:
        return (args.recovery,)
    if args.fidelities is None:
        return None
    return tuple(level.strip() for level in args.fidelities.split(",") if level.strip())


def search_config(args: argparse.Namespace) -> SearchConfig:
    """The `SearchConfig` of the flags over the ``--config`` file over the defaults.

    Raises:
        agent.config.ConfigError, envs.reward.RewardError: A value is invalid.
    """
    from agent.config import SearchConfig, load_config
    from envs.reward import RewardConfig

    if args.resume is not None:
        return resume_config(args)
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
    if args.threads is not None and args.address is None:
        try:
            thread_count(str(args.threads))
        except argparse.ArgumentTypeError as exc:
            raise CliError(f"--threads: {exc}") from None
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
        fidelities=fidelities(args),
        eta=args.eta,
        time_budget=args.time_budget,
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
        seeds=False if args.no_seeds else None,
        log_model=False if args.no_log_model else None,
    )


def run(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from agent.search import SearchProgress, run_search

    config = search_config(args)
    json_out = json_stdout() if args.json else None
    columns = (
        TextColumn("[bold]{task.fields[phase]}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} candidates"),
        TextColumn("best reward {task.fields[reward]}"),
        TextColumn("best speedup @≤1pt {task.fields[speedup]}"),
        TimeElapsedColumn(),
        TextColumn("[dim]{task.fields[detail]}"),
    )
    with Progress(*columns, console=err_console(), disable=args.json, transient=False) as bar:
        task = bar.add_task(
            "search", total=config.budget, phase="starting", reward="–", speedup="–", detail=""
        )

        def show(p: SearchProgress) -> None:
            bar.update(
                task,
                completed=p.evaluated,
                phase=p.phase,
                reward=fmt(p.best_reward, ".3f"),
                speedup=fmt(p.best_speedup_1pt, ".2f", "x"),
                detail=p.detail,
            )

        result = run_search(config, show, resume=args.resume is not None)
    summary = {**result.summary, "out": str(result.out), "parent_run_id": result.parent_run_id}
    if json_out is not None:
        json_out.write(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
        json_out.flush()
    else:
        con = console()
        s = result.summary
        con.print(
            f"{'interrupted' if result.interrupted else 'done'}: {s['candidates']} candidates "
            f"({s['failed']} failed) in {s['wall_seconds']:.0f} s — best speedup at ≤1 pt drop "
            f"{fmt(s['best_speedup_at_1pt'], '.2f', 'x')}, hypervolume {s['hypervolume']:.3f}, "
            f"overhead {100 * s['overhead_share']:.1f} % of wall time"
        )
        con.print(
            f"search directory: {result.out}  (report: {result.out / 'report' / 'report.md'})"
        )
        con.print(f"MLflow parent run: {result.parent_run_id}  (`layerpilot ui` to browse)")
    return EXIT_INTERRUPTED if result.interrupted else 0
