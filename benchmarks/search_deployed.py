"""The deployed front: each agent at an equal wall budget, its front exported with full recovery
and re-measured, beside the hand pipeline measured in the same run of this script.

Usage:
    python benchmarks/search_deployed.py [--workloads digits-resnet mnist1d-cnn]
        [--runs ppo:0 ppo:1 ppo:2 tpe:0 random:0] [--minutes 20] [--front 3]
        [--out benchmarks/results/search_deployed.md] [--table-only]

Per workload (ONNX Runtime CPU, batch 1, 1 thread, as the search measures):

1. **Hand pipeline** (what ``benchmarks/recovery.py`` calls it): uniform structured pruning of
   every prunable unit at 0.5 / 0.625 / 0.75 / 0.875, each BatchNorm-re-estimated and fully
   recovered (400 distillation steps), plus int8 everywhere on the fastest ratio within 1 point;
   the fastest of these within 1 point is the hand pipeline's figure.
2. **Searches.** ``layerpilot search --time-budget <minutes>m`` per ``agent:seed``, each in its
   own process, MLflow store and candidate cache, with the default fidelity schedule
   (none → short → full, ASHA promotion, confirmation at full). Its summary is a row.
3. **Export.** Of each search's candidates measured at full recovery (what the search reports),
   the Pareto front within 10 points: the best within 1 point and the ``--front`` fastest others
   are rebuilt with full recovery and re-measured here, next to the hand pipeline. The deployed
   hypervolume is computed on the re-measured points where they exist and on the search's own
   full-recovery measurements elsewhere (same weights: the recovery is seeded; only latency is
   re-timed).

Rows go to ``<out>.jsonl`` as they finish: an interrupted run resumes where it stopped, and
``--table-only`` renders the table from a partial file.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

from _common import Log, measure_full, run_search_json, write_table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORKLOADS = ("digits-resnet", "mnist1d-cnn")
RUNS = ("ppo:0", "ppo:1", "ppo:2", "tpe:0", "random:0")
RATIOS = (0.5, 0.625, 0.75, 0.875)
MAX_DROP = 1.0
HV_MARGIN = 10.0


def hand_pipeline(subject: Any, log: Log) -> None:
    from search_spaces import Strategy
    from search_spaces.actions import with_everywhere

    wl = subject.workload.name
    if log.find(workload=wl, kind="baseline") is None:
        log.add({"workload": wl, "kind": "baseline", **measure_full(subject, Strategy())})
    prunable = [u.name for u in subject.units if u.allows("prune")]
    for ratio in RATIOS:
        name = f"prune {ratio:g}"
        if log.find(workload=wl, kind="hand", strategy=name) is None:
            strategy = Strategy({u: {"prune": ratio} for u in prunable})
            row = log.add({"workload": wl, "kind": "hand", "strategy": name, "ratio": ratio,
                           **measure_full(subject, strategy)})  # fmt: skip
            print(f"{wl} hand {name}: {row}", flush=True)
    base = log.find(workload=wl, kind="baseline")
    assert base is not None
    within = [
        r
        for r in log.rows
        if r.get("workload") == wl
        and r.get("kind") == "hand"
        and "ratio" in r
        and base["accuracy"] - r["accuracy"] <= MAX_DROP
    ]
    ratio = min(within, key=lambda r: r["latency_ms"])["ratio"] if within else min(RATIOS)
    name = f"prune {ratio:g} + int8"
    if log.find(workload=wl, kind="hand", strategy=name) is None:
        strategy = with_everywhere(
            Strategy({u: {"prune": ratio} for u in prunable}), "precision", "int8"
        )
        row = log.add({"workload": wl, "kind": "hand", "strategy": name,
                       **measure_full(subject, strategy)})  # fmt: skip
        print(f"{wl} hand {name}: {row}", flush=True)


def run_search(wl: str, run: str, minutes: float, work: Path, log: Log) -> None:
    if log.find(workload=wl, kind="search", run=run) is not None:
        return
    agent, seed = run.split(":")
    out = work / f"{wl}-{agent}-s{seed}"
    os.makedirs(work, exist_ok=True)
    cmd = [sys.executable, "-m", "agent.cli", "search", "--workload", wl, "--agent", agent,
           "--agent-seed", seed, "--time-budget", f"{minutes:g}m", "--out", str(out),
           "--tracking-uri", f"sqlite:///{work / (out.name + '.db')}", "--json"]  # fmt: skip
    if (out / "search.json").exists():
        cmd = [sys.executable, "-m", "agent.cli", "search", "--resume", str(out), "--json"]
    summary, wall = run_search_json(cmd)
    keep = {k: v for k, v in summary.items() if isinstance(v, int | float | str)}
    log.add({"workload": wl, "kind": "search", "run": run, "dir": str(out), "wall": wall, **keep})
    print(f"{wl} search {run}: {wall:.0f} s, best@1pt {summary.get('best_speedup_at_1pt')}")


def export_front(subject: Any, wl: str, run: str, front_k: int, log: Log) -> None:
    from agent.report import load_records, pareto_front

    row = log.find(workload=wl, kind="search", run=run)
    if row is None:
        return
    base = log.find(workload=wl, kind="baseline")
    assert base is not None
    records = [r for r in load_records(Path(row["dir"])) if r.ok and r.fidelity == "full"]
    pool = [r for r in records if r.accuracy_drop <= HV_MARGIN]
    front = [pool[i] for i in pareto_front([(r.accuracy, r.speedup) for r in pool])]
    within = [r for r in front if r.accuracy_drop <= MAX_DROP]
    best = max(within, key=lambda r: r.speedup, default=None)
    others = sorted((r for r in front if r is not best), key=lambda r: -r.speedup)[:front_k]
    for record in ([best] if best else []) + others:
        if log.find(workload=wl, kind="export", run=run, index=record.index) is not None:
            continue
        assert record.result is not None
        measured = measure_full(subject, record.strategy)
        log.add({
            "workload": wl, "kind": "export", "run": run, "index": record.index,
            "best": record is best, "search_accuracy": record.accuracy,
            "search_latency_ms": record.result.latency_ms,
            "search_baseline_latency_ms": record.result.baseline_latency_ms,
            "search_speedup": record.speedup, "key": record.strategy.key(), **measured,
        })  # fmt: skip
        print(f"{wl} export {run} #{record.index}: {measured}", flush=True)
    if log.find(workload=wl, kind="front", run=run) is None:
        drops: dict[str, dict[str, float]] = {}
        for r in load_records(Path(row["dir"])):
            if r.ok:
                drops.setdefault(r.strategy.key(), {})[r.fidelity] = r.accuracy_drop
        log.add({"workload": wl, "kind": "front", "run": run,
                 "points": [(r.index, r.accuracy, r.speedup) for r in front],
                 "pairs": list(drops.values())})  # fmt: skip


def _hv(points: list[tuple[float, float]], ref_accuracy: float) -> float:
    from agent.report import hypervolume

    return hypervolume(points, ref_accuracy)


def table(log: Log, workloads: list[str], runs: list[str], minutes: float, cpu: str) -> str:
    lines = [
        "# The deployed front: search at an equal wall budget, exported with full recovery",
        "",
        f"{platform.machine()}, {cpu}, {os.cpu_count()} cores. Command: "
        f"`python benchmarks/search_deployed.py --minutes {minutes:g}` "
        f"(runs {' '.join(runs)}). ONNX Runtime CPU, batch 1, 1 thread.",
        "",
        "Exported = rebuilt with full recovery (400 KD steps) and re-measured in this script, "
        "beside the hand pipeline; every speedup is against the baseline timed right after it "
        "(paired). HV: "
        "deployed hypervolume (accuracy − (baseline − 10 pt)) × (speedup − 1), on the exported "
        "points and the search's own full-recovery points elsewhere.",
        "",
    ]
    partial = False
    for wl in workloads:
        base = log.find(workload=wl, kind="baseline")
        if base is None:
            partial = True
            continue
        hand = [r for r in log.rows if r.get("workload") == wl and r.get("kind") == "hand"]
        ok = [r for r in hand if base["accuracy"] - r["accuracy"] <= MAX_DROP]
        best_hand = max(ok, key=lambda r: r["speedup"], default=None)
        hand_x = best_hand["speedup"] if best_hand else float("nan")
        lines += [
            f"## {wl}",
            "",
            f"Baseline {base['accuracy']:.2f} %, {base['latency_ms']:.3f} ms. Hand pipeline: "
            + (
                f"**{hand_x:.2f}x** ({best_hand['strategy']}, drop "
                f"{base['accuracy'] - best_hand['accuracy']:.2f} pt)"
                if best_hand
                else "none within 1 pt"
            ),
            "",
            "| run | wall s | candidates | at full | search best@1pt | exported best@1pt | "
            "exported drop | vs hand | acc Δ search−export | latency Δ | deployed HV |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        by_agent: dict[str, list[float]] = {}
        for run in runs:
            s = log.find(workload=wl, kind="search", run=run)
            if s is None:
                partial = True
                lines.append(f"| {run} | – | | | | | | | | | |")
                continue
            exports = {
                r["index"]: r
                for r in log.rows
                if r.get("workload") == wl and r.get("kind") == "export" and r.get("run") == run
            }
            front = log.find(workload=wl, kind="front", run=run)
            if front is None:
                partial = True
            points = []
            for index, accuracy, speedup in front["points"] if front else []:
                e = exports.get(index)
                if e is not None:
                    points.append((e["accuracy"], e["speedup"]))
                else:
                    points.append((accuracy, speedup))
            hv = _hv(points, base["accuracy"] - HV_MARGIN)
            by_agent.setdefault(run.split(":")[0], []).append(hv)
            best = next((e for e in exports.values() if e["best"]), None)
            if best is not None:
                x = best["speedup"]
                drop = base["accuracy"] - best["accuracy"]
                d_acc = best["search_accuracy"] - best["accuracy"]
                d_lat = best["search_latency_ms"] / best["latency_ms"] - 1
                cells = (
                    f"{x:.2f}x | {drop:.2f} | {x / hand_x:.2f}x | {d_acc:+.2f} pt | "
                    f"{100 * d_lat:+.1f} %"
                )
            else:
                cells = "– | | | |"
            lines.append(
                f"| {run} | {s['wall']:.0f} | {s.get('candidates', '–')} | "
                f"{s.get('records_full', 0)} | {s.get('best_speedup_at_1pt', float('nan')):.2f}x "
                f"| {cells} | {hv:.2f} |"
            )
        rho = []
        for level in ("none", "short"):
            pairs = [
                (p[level], p["full"])
                for r in log.rows
                if r.get("workload") == wl and r.get("kind") == "front"
                for p in r.get("pairs", [])
                if level in p and "full" in p
            ]
            if len(pairs) >= 3:
                from scipy.stats import spearmanr

                value = spearmanr([a for a, _ in pairs], [b for _, b in pairs]).statistic
                rho.append(f"{level} vs full ρ = {value:.2f} ({len(pairs)} strategies)")
        if rho:
            lines += [
                "",
                "Inside the searches (promoted strategies only, so biased towards good ones): "
                + "; ".join(rho),
            ]
        if by_agent:
            lines += [
                "",
                "Mean deployed HV per agent: "
                + ", ".join(
                    f"{a} {statistics.mean(v):.2f} (n={len(v)})" for a, v in by_agent.items()
                ),
            ]
        lines.append("")
    if partial:
        lines.insert(2, "**Partial**: not every run has finished; rows so far.\n")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS))
    parser.add_argument("--runs", nargs="+", default=list(RUNS))
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--front", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/search_deployed.md"))
    parser.add_argument("--work", type=Path, default=Path("benchmarks/runs/search_deployed"))
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()

    from runners.latency import cpu_model

    log = Log(args.out.with_suffix(".jsonl"))
    if not args.table_only:
        import torch

        from envs.workloads import get_workload
        from runners.build import Subject

        torch.set_num_threads(1)
        for wl in args.workloads:
            subject = Subject.prepare(get_workload(wl))
            hand_pipeline(subject, log)
            for run in args.runs:
                run_search(wl, run, args.minutes, args.work, log)
                export_front(subject, wl, run, args.front, log)
                write_table(args.out, table(log, args.workloads, args.runs, args.minutes,
                                            cpu_model()))  # fmt: skip
    write_table(args.out, table(log, args.workloads, args.runs, args.minutes, cpu_model()))


if __name__ == "__main__":
    main()
