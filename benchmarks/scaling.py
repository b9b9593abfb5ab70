"""Scaling: candidates evaluated per minute with 1 and 2 evaluation workers on this machine.

Each row is a full `layerpilot search` (its own process, MLflow store and candidate cache) with
the random agent and the same seed, so every row evaluates the same strategies in the same
order. The rate is candidates / (wall time − start-up): start-up (workers' set-up and baselines,
MLflow) is reported apart. Two evaluation modes:

- ``flops`` (latency-free): accuracy measured on the runtime, speed from FLOPs; nothing is
  timed, so workers run fully in parallel;
- ``latency``: every candidate timed; the timed sections of all workers on one machine take
  turns under the host's measurement lock (by design), so only building and scoring overlap.

Each record also carries the per-candidate split (build + score vs timed section vs driver time),
from which the table projects N nodes: per node, ``workers`` evaluators in parallel (latency
mode: at most one timing at a time), and the driver (agent, tracking) serial for all of them —
the search is measurement-bound until N × node rate reaches 1 / driver time per candidate, then
learner/driver-bound.

Results append to ``<out>.jsonl`` as each run finishes (runs already there are skipped);
``--table-only`` prints the table from it.

Usage:
    taskset -c 0,1 python benchmarks/scaling.py --budget 40 --out benchmarks/results/scaling.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

from _common import run_search_json, write_table

WORKLOAD = "digits-resnet"
RUNS = [  # (measure, executor, workers)
    ("flops", "local", 1),
    ("flops", "local", 2),
    ("latency", "local", 1),
    ("latency", "local", 2),
    ("flops", "ray", 2),
]


def run_one(measure: str, executor: str, workers: int, budget: int, work: Path) -> dict[str, Any]:
    out = work / f"{measure}-{executor}-w{workers}"
    cmd = [
        sys.executable, "-m", "agent.cli", "search", "--workload", WORKLOAD,
        "--agent", "random", "--agent-seed", "0", "--budget", str(budget),
        "--measure", measure, "--executor", executor, "--workers", str(workers),
        "--out", str(out), "--cache", str(out / "cache.jsonl"), "--no-log-model",
        "--tracking-uri", f"sqlite:///{(work / 'mlflow.db').resolve()}",
        "--experiment", "scaling", "--json",
    ]  # fmt: skip
    summary, wall = run_search_json(cmd)
    records = [json.loads(line) for line in (out / "candidates.jsonl").read_text().splitlines()]
    ok = [r["outcome"] for r in records if r["outcome"]["status"] == "ok"]
    infos = [o["result"]["info"] for o in ok]
    searching = summary["wall_seconds"] - summary["startup_seconds"]
    return {
        "measure": measure,
        "executor": executor,
        "workers": workers,
        "budget": budget,
        "candidates": summary["candidates"],
        "failed": summary["failed"],
        "process_wall_s": wall,
        "startup_s": summary["startup_seconds"],
        "searching_s": searching,
        "per_minute": 60 * summary["candidates"] / searching,
        "eval_s_median": statistics.median(o["eval_seconds"] for o in ok),
        "timing_s_median": statistics.median(i.get("timing_s", 0.0) for i in infos),
        "lock_wait_s_median": statistics.median(i.get("measure_lock_wait_s", 0.0) for i in infos),
        "driver_s_per_candidate": (summary["tracking_seconds"] + summary["agent_seconds"])
        / max(1, summary["candidates"]),
        "workers_seen": len({o["worker"] for o in ok}),
        "latency_by_key": {o["result"]["strategy_key"]: o["result"]["latency_ms"] for o in ok},
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }


def project(row: dict[str, Any], nodes: int) -> float:
    """Candidates per minute on ``nodes`` machines like this one (see module docstring)."""
    eval_s, timed = row["eval_s_median"], row["timing_s_median"]
    per_node = row["workers"] / eval_s
    if row["measure"] == "latency":
        per_node = min(per_node, 1.0 / max(timed, 1e-9))
    driver = 1.0 / max(row["driver_s_per_candidate"], 1e-9)
    return 60 * min(nodes * per_node, driver)


def _consistency(row: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """How far this row's latencies are from the 1-worker local run's, strategy by strategy:
    parallel workers must not disturb what is timed."""
    if row["measure"] != "latency" or row["workers"] == 1:
        return "–"
    [ref] = [r for r in rows if r["measure"] == "latency" and r["workers"] == 1]
    a, b = ref["latency_by_key"], row["latency_by_key"]
    diffs = [abs(b[k] / a[k] - 1) for k in set(a) & set(b)]
    median, worst = 100 * statistics.median(diffs), 100 * max(diffs)
    return f"{median:.1f} % / {worst:.1f} % ({len(diffs)} strategies)"


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| measure | executor | workers | candidates | start-up s | searching s | "
        "candidates / min | vs 1 worker | eval s (median) | timed s | lock wait s | "
        "driver s / cand. | latency vs 1 worker: median abs Δ / max abs Δ |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    base = {
        (r["measure"]): r["per_minute"]
        for r in rows
        if r["workers"] == 1 and r["executor"] == "local"
    }
    for r in rows:
        ratio = r["per_minute"] / base[r["measure"]] if r["measure"] in base else float("nan")
        lines.append(
            f"| {r['measure']} | {r['executor']} | {r['workers']} | {r['candidates']} | "
            f"{r['startup_s']:.0f} | {r['searching_s']:.0f} | {r['per_minute']:.1f} | "
            f"{ratio:.2f}x | {r['eval_s_median']:.2f} | {r['timing_s_median']:.2f} | "
            f"{r['lock_wait_s_median']:.2f} | {r['driver_s_per_candidate']:.3f} | "
            f"{_consistency(r, rows)} |"
        )
    lines += [
        "",
        "Projection to N nodes like this one (candidates / min; formula in `benchmarks/scaling.py`"
        "): each node runs its workers in parallel, a latency-mode node times one candidate at a "
        "time, and the driver handles every candidate serially.",
        "",
        "| measure | workers / node | 1 | 2 | 4 | 8 | 16 | 64 | bound at 64 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if r["executor"] != "local":
            continue
        cells = [f"{project(r, n):.0f}" for n in (1, 2, 4, 8, 16, 64)]
        bound = "driver" if project(r, 64) < 64 * project(r, 1) - 1e-6 else "measurement"
        lines.append(f"| {r['measure']} | {r['workers']} | {' | '.join(cells)} | {bound} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=int, default=40)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/scaling.md"))
    parser.add_argument("--work", type=Path, default=Path("runs/scaling"))
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    log = args.out.with_suffix(".jsonl")
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    if not args.table_only:
        args.work.mkdir(parents=True, exist_ok=True)
        done = {(r["measure"], r["executor"], r["workers"], r["budget"]) for r in rows}
        for measure, executor, workers in RUNS:
            if (measure, executor, workers, args.budget) in done:
                continue
            row = run_one(measure, executor, workers, args.budget, args.work)
            rows.append(row)
            with log.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    text = (
        f"# Scaling: candidates per minute ({WORKLOAD}, random agent, same strategies)\n\n"
        f"{rows[0]['machine'] if rows else ''}. Command: `python benchmarks/scaling.py "
        f"--budget {args.budget}`\n\n{table(rows)}\n"
    )
    write_table(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
