"""Search quality: PPO vs random vs uniform vs TPE at equal budget and seeds, measured for real.

Each run is a full `layerpilot search` (its own process, MLflow store and candidate cache — no
sharing between runs, so every agent pays for every candidate it measures). Per run we record
the hypervolume of its front (accuracy vs measured speedup, reference = baseline accuracy − 10
points and 1.0x), the best measured speedup at ≤ 1 point accuracy drop, the wall time, and the
share of wall time spent outside candidate (and probe) measurement: agent + tracking + start-up.

Results append to ``<out>.jsonl`` as each run finishes, so an interrupted benchmark resumes where
it stopped (runs already in the file are skipped) and the table can be printed from a partial
file at any time (``--table-only``).

Usage:
    python benchmarks/search_quality.py --budget 100 --seeds 0 1 2 \
        --out benchmarks/results/search_quality.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from _common import run_search_json, write_table

WORKLOADS = ("digits-resnet", "mnist1d-cnn")
AGENTS = ("ppo", "random", "uniform", "tpe")
ABLATIONS = {
    # is it the RL or the surrogate? same loop, one source of proposals switched off
    "ppo-policy-only": "[ppo]\nlocal_candidates = 0\n",
    "surrogate-local-only": "[ppo]\npolicy_proposals = false\n",
}


def run_one(workload: str, agent: str, seed: int, budget: int, work: Path) -> dict[str, Any]:
    out = work / f"{workload}-{agent}-s{seed}"
    extra: list[str] = []
    if agent in ABLATIONS:
        config = work / f"{agent}.toml"
        config.write_text(ABLATIONS[agent])
        extra = ["--config", str(config)]
    cmd = [
        sys.executable, "-m", "agent.cli", "search", *extra,
        "--workload", workload, "--agent", "ppo" if agent in ABLATIONS else agent,
        "--agent-seed", str(seed),
        "--budget", str(budget), "--out", str(out), "--cache", str(out / "cache.jsonl"),
        "--tracking-uri", f"sqlite:///{(work / 'mlflow.db').resolve()}",
        "--experiment", "search-quality", "--json",
    ]  # fmt: skip
    summary, wall = run_search_json(cmd)
    return {
        "workload": workload,
        "agent": agent,
        "seed": seed,
        "budget": budget,
        "process_wall_seconds": wall,
        **summary,
    }


def _median(values: list[float]) -> float:
    finite = [v for v in values if v == v]
    return statistics.median(finite) if finite else float("nan")


def _fmt(x: float, spec: str) -> str:
    return "–" if x != x else format(x, spec)


def table(rows: list[dict[str, Any]], budget: int, seeds: list[int]) -> str:
    lines = []
    done = {(r["workload"], r["agent"], r["seed"]) for r in rows if r["agent"] in AGENTS}
    total = len(WORKLOADS) * len(AGENTS) * len(seeds)
    status = "complete" if len(done) >= total else f"PARTIAL: {len(done)} of {total} runs"
    lines.append(f"# Search quality — budget {budget} candidates, seeds {seeds} ({status})\n")
    lines.append(
        "Hypervolume: accuracy × speedup area dominated by the front, reference = baseline "
        "accuracy − 10 points and 1.0x. Best @≤1pt: highest measured ORT CPU speedup with "
        "accuracy drop ≤ 1 point. Overhead: share of wall time outside candidate and probe "
        "measurement (agent + tracking + start-up). Probe s: PPO's one-time measured cost table "
        "(cached per workload/runtime/machine, so only the first PPO run on a setup pays it).\n"
    )
    header = (
        "| workload | agent | runs | HV median | HV per seed | best speedup @≤1pt median | "
        "best @≤1pt per seed | candidates | wall s median | probe s | overhead median |"
    )
    lines.append(header)
    lines.append("|---|---|---:|---:|---|---:|---|---:|---:|---:|---:|")
    for workload in WORKLOADS:
        for agent in (*AGENTS, *ABLATIONS):
            rs = sorted(
                (r for r in rows if r["workload"] == workload and r["agent"] == agent),
                key=lambda r: r["seed"],
            )
            if not rs:
                continue
            hv = [r["hypervolume"] for r in rs]
            best = [r["best_speedup_at_1pt"] for r in rs]
            lines.append(
                f"| {workload} | {agent} | {len(rs)} | {_fmt(_median(hv), '.2f')} | "
                f"{', '.join(_fmt(v, '.2f') for v in hv)} | {_fmt(_median(best), '.2f')} | "
                f"{', '.join(_fmt(v, '.2f') for v in best)} | "
                f"{', '.join(str(r['candidates']) for r in rs)} | "
                f"{_fmt(_median([r['wall_seconds'] for r in rs]), '.0f')} | "
                f"{', '.join(_fmt(r.get('probe_seconds', 0.0), '.0f') for r in rs)} | "
                f"{_fmt(100 * _median([r['overhead_share'] for r in rs]), '.1f')} % |"
            )
    lines.append("")
    for workload in WORKLOADS:
        ppo = [r["hypervolume"] for r in rows if r["workload"] == workload and r["agent"] == "ppo"]
        rnd = [
            r["hypervolume"] for r in rows if r["workload"] == workload and r["agent"] == "random"
        ]
        if ppo and rnd:
            margin = _median(ppo) - _median(rnd)
            lines.append(
                f"- {workload}: PPO median hypervolume {_median(ppo):.2f} vs random "
                f"{_median(rnd):.2f} (margin {margin:+.2f})"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS))
    parser.add_argument("--agents", nargs="+", default=list(AGENTS), choices=[*AGENTS, *ABLATIONS])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/search_quality.md"))
    parser.add_argument("--work", type=Path, default=Path("runs/bench-search-quality"))
    parser.add_argument("--table-only", action="store_true", help="print the table and exit")
    args = parser.parse_args()

    jsonl = args.out.with_suffix(".jsonl")
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()] if jsonl.exists() else []
    rows = [r for r in rows if r["budget"] == args.budget]
    if not args.table_only:
        args.work.mkdir(parents=True, exist_ok=True)
        for seed in args.seeds:  # seed-major: a partial table still compares every agent
            for workload in args.workloads:
                for agent in args.agents:
                    if any(
                        (r["workload"], r["agent"], r["seed"]) == (workload, agent, seed)
                        for r in rows
                    ):
                        continue
                    print(f"running {workload} {agent} seed {seed} ...", flush=True)
                    row = run_one(workload, agent, seed, args.budget, args.work)
                    rows.append(row)
                    with jsonl.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                    write_table(args.out, table(rows, args.budget, args.seeds))
                    print(
                        f"  hv {row['hypervolume']:.2f} best@1pt {row['best_speedup_at_1pt']:.2f}"
                        f" wall {row['wall_seconds']:.0f}s",
                        flush=True,
                    )
    text = table(rows, args.budget, args.seeds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_table(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
