"""How well each cheap accuracy fidelity ranks candidates against full recovery (Spearman ρ).

Usage:
    python benchmarks/fidelity.py [--workloads digits-resnet mnist1d-cnn] [--count 24]
                                  [--levels none short medium full] [--out FILE] [--table-only]

Per workload, ``--count`` strategies are drawn from the search space the way a search visits
it: a third change every unit at random (what the random agent proposes), a third change each
unit with probability 0.5, a third with probability 0.2 (near the unchanged model, where a
search's first candidates land). Each is built once per recovery level
(``runners.recovery.RECOVERY_PRESETS``, plus ``medium`` = 120 steps here) and its held-out
accuracy measured (latency is not timed: it does not depend on the fine-tune). The table gives
the Spearman rank correlation of each level's accuracy with ``full``'s — over all strategies,
and over those within 5 points after full recovery (where the search's decisions are made) —
and the seconds each level costs.

This is EagleEye's question (does adaptive-BN accuracy predict fine-tuned accuracy?) asked of
our fidelities, and it decides which fidelity a multi-fidelity search should spend widely.
Rows go to ``<out>.jsonl`` as they finish, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np
from _common import write_table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from envs.workloads import get_workload
from runners import get_runtime
from runners.build import BuildConfig, Subject
from runners.evaluate import EvalConfig, measure
from runners.latency import cpu_model
from runners.recovery import RECOVERY_PRESETS, RecoveryConfig
from search_spaces import Strategy
from search_spaces.space import DecisionSpace

LEVELS: dict[str, RecoveryConfig] = {**RECOVERY_PRESETS, "medium": RecoveryConfig(steps=120)}
NEAR = 5.0
"""Points of full-recovery drop that make a strategy 'near' (the ρ that matters most)."""


def strategies(subject: Subject, count: int, seed: int) -> list[Strategy]:
    runtime = get_runtime("onnxruntime-cpu", threads=1)
    space = DecisionSpace(subject.units, precisions=runtime.precisions)
    rng = np.random.default_rng(seed)
    out: list[Strategy] = []
    seen: set[str] = set()
    mix = (1.0, 0.5, 0.2)
    while len(out) < count:
        p = mix[len(out) % len(mix)]
        fresh, choices = space.sample(rng), space.identity()
        for i in range(len(choices)):
            if rng.random() < p:
                choices[i] = fresh[i]
        strategy = space.to_strategy(choices)
        if not strategy.is_identity and strategy.key() not in seen:
            seen.add(strategy.key())
            out.append(strategy)
    return out


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's ρ (scipy's, ties at their mean rank); NaN with fewer than 3 pairs."""
    from scipy.stats import spearmanr  # scikit-learn's dependency

    if len(a) < 3:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def load(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def run(workload: str, count: int, levels: list[str], log: Path, seed: int) -> None:
    rows = load(log)
    done = {(r["workload"], r["key"], r["level"]) for r in rows}
    subject = Subject.prepare(get_workload(workload))
    base_key = ("baseline", "none")
    if (workload, *base_key) not in done:
        m = measure(subject, Strategy(), _config("none"))
        _add(
            log,
            {
                "workload": workload,
                "key": "baseline",
                "level": "none",
                "accuracy": m.accuracy,
                "seconds": 0.0,
            },
        )
    for n, strategy in enumerate(strategies(subject, count, seed)):
        for level in levels:
            if (workload, strategy.key(), level) in done:
                continue
            m = measure(subject, strategy, _config(level))
            recovery = m.info.get("recovery") or {}
            row = {
                "workload": workload,
                "key": strategy.key(),
                "index": n,
                "level": level,
                "accuracy": m.accuracy,
                "seconds": float(recovery.get("seconds", 0.0)),
                "strategy": strategy.to_dict(),
            }
            print(
                f"{workload} #{n} {level}: {m.accuracy:.2f} % ({row['seconds']:.0f} s)", flush=True
            )
            _add(log, row)


def _config(level: str) -> EvalConfig:
    return EvalConfig(build=BuildConfig(bn_batches=8, recovery=LEVELS[level]), time_latency=False)


def _add(log: Path, row: dict[str, Any]) -> None:
    with log.open("a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def render(log: Path, workloads: list[str], levels: list[str], count: int, command: str) -> str:
    rows = load(log)
    lines = [
        "# Accuracy fidelity vs full recovery (Spearman ρ of held-out accuracy)",
        "",
        f"{platform.machine()}, {cpu_model()}, {os.cpu_count()} cores. Command: `{command}`",
        "",
        "Levels: "
        + ", ".join(f"{k} = {LEVELS[k].steps} KD steps" for k in levels)
        + ". Strategies drawn from the default search space (prune, precision, skip, "
        "low-rank) at three densities (every unit / half / a fifth changed).",
        "",
        f"ρ near: over the strategies within {NEAR:g} points of the baseline after full "
        "recovery. Each row counts the strategies measured at both levels.",
        "",
        "| workload | level | strategies | ρ vs full (all) | ρ vs full (near) | "
        "mean acc | mean recovery s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for wl in workloads:
        base = next((r for r in rows if r["workload"] == wl and r["key"] == "baseline"), None)
        by: dict[str, dict[str, dict[str, Any]]] = {}
        for r in rows:
            if r["workload"] == wl and r["key"] != "baseline":
                by.setdefault(r["level"], {})[r["key"]] = r
        full = by.get("full", {})
        for level in levels:
            have = by.get(level, {})
            keys = [k for k in have if k in full]
            near = [
                k
                for k in keys
                if base is not None and base["accuracy"] - full[k]["accuracy"] <= NEAR
            ]
            rho_all = spearman(
                [have[k]["accuracy"] for k in keys], [full[k]["accuracy"] for k in keys]
            )
            rho_near = spearman(
                [have[k]["accuracy"] for k in near], [full[k]["accuracy"] for k in near]
            )
            accs = [r["accuracy"] for r in have.values()]
            secs = [r["seconds"] for r in have.values()]
            lines.append(
                f"| {wl} | {level} | {len(keys)} | {rho_all:.2f} | {rho_near:.2f} "
                f"({len(near)}) | {np.mean(accs) if accs else float('nan'):.2f} | "
                f"{np.mean(secs) if secs else float('nan'):.1f} |"
            )
        if base is not None:
            lines.append(f"| {wl} | baseline | | | | {base['accuracy']:.2f} | |")
    complete = all(
        sum(1 for r in rows if r["workload"] == wl and r["level"] == "full") >= count
        for wl in workloads
    )
    if not complete:
        lines.insert(1, "\n**Partial**: the run has not finished; rows so far.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workloads", nargs="+", default=["digits-resnet", "mnist1d-cnn"])
    parser.add_argument("--count", type=int, default=24)
    parser.add_argument("--levels", nargs="+", default=["none", "short", "medium", "full"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/fidelity.md"))
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    unknown = sorted(set(args.levels) - set(LEVELS))
    if unknown or "full" not in args.levels:
        parser.error(f"--levels: unknown {unknown}; known {sorted(LEVELS)}; 'full' is required")
    log = args.out.with_suffix(".jsonl")
    # the command that makes the rows (re-rendering them is not part of it)
    command = " ".join(
        ["python benchmarks/fidelity.py", *(a for a in sys.argv[1:] if a != "--table-only")]
    )
    if not args.table_only:
        for wl in args.workloads:
            run(wl, args.count, args.levels, log, args.seed)
            write_table(args.out, render(log, args.workloads, args.levels, args.count, command))
    write_table(args.out, render(log, args.workloads, args.levels, args.count, command))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
