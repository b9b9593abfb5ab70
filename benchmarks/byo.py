"""Bring-your-own models end to end: the two examples searched, exported and timed by stage.

Usage:
    python benchmarks/byo.py [--examples hf_encoder mobilenet] [--minutes 30]
        [--out benchmarks/results/byo.md] [--work benchmarks/runs/byo] [--table-only]

Per example (``examples/<name>.py:build``; ONNX Runtime CPU, 1 thread, batch 1), at its bound
(the encoder: cosine ≥ 0.98 to the original embeddings, a 2-point drop; the CNN: 1 point):

1. **Stages.** Loading the workload (training it on first use), unit discovery
   (`runners.build.Subject.prepare`), then the search's own split (probe table, search,
   confirmation) from its summary, and the export's wall time.
2. **References**, measured here beside each other (paired baselines): int8 everywhere (no
   recovery: it changes no structure) and the hand pipeline, uniform pruning of every
   prunable unit at 0.25 / 0.5 / 0.625 / 0.75 / 0.875 with full recovery (a rerun measures
   the ratios a partial file lacks), the fastest within the bound.
3. **Search.** ``layerpilot search --model ... --time-budget <minutes>m --max-drop <bound>``
   (the default PPO agent and fidelity schedule), then ``layerpilot export <dir> --format onnx
   --max-drop <bound>``, whose re-measured speedup and drop are the row's figures.

Rows go to ``<out>.jsonl`` as they finish; a rerun skips what is there, ``--table-only``
renders the table from a partial file.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import Log, measure_full, run_search_json, write_table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BOUNDS = {"hf_encoder": 2.0, "mobilenet": 1.0}
"""Metric points each example may lose: cosine 0.98 for the encoder, 1 accuracy point."""
RATIOS = (0.25, 0.5, 0.625, 0.75, 0.875)


def spec(example: str) -> str:
    return f"{ROOT / 'examples' / example}.py:build"


def references(example: str, log: Log) -> None:
    """Load and discovery timings, the baseline, int8 everywhere and the hand pipeline."""
    from envs.workloads import load_workload_spec
    from runners.build import Subject
    from search_spaces import Strategy

    todo = [r for r in RATIOS if log.find(example=example, kind="hand", ratio=r) is None]
    if not todo:
        return
    start = time.perf_counter()
    workload = load_workload_spec(spec(example))
    loaded = time.perf_counter()
    subject = Subject.prepare(workload)
    prepared = time.perf_counter()
    if log.find(example=example, kind="stages") is None:
        log.add({"example": example, "kind": "stages", "load_s": loaded - start,
                 "discovery_s": prepared - loaded, "units": len(subject.units),
                 "params": sum(p.numel() for p in workload.model.parameters())})  # fmt: skip
    if log.find(example=example, kind="int8") is None:
        int8 = Strategy({"*": {"precision": "int8"}})
        log.add({"example": example, "kind": "int8", **measure_full(subject, int8)})
    prunable = [u.name for u in subject.units if u.allows("prune")]
    for ratio in todo:
        strategy = Strategy({name: {"prune": ratio} for name in prunable})
        row = log.add({"example": example, "kind": "hand", "ratio": ratio,
                       **measure_full(subject, strategy)})  # fmt: skip
        print(f"{example} hand {ratio}: {row}", flush=True)


def search_and_export(example: str, minutes: float, work: Path, log: Log) -> None:
    out = work / f"{example}-ppo"
    db = f"sqlite:///{work / (example + '.db')}"
    bound = BOUNDS[example]
    work.mkdir(parents=True, exist_ok=True)
    if log.find(example=example, kind="search") is None:
        cmd = [sys.executable, "-m", "agent.cli", "search", "--model", spec(example),
               "--time-budget", f"{minutes:g}m", "--max-drop", f"{bound:g}", "--out", str(out),
               "--tracking-uri", db, "--json"]  # fmt: skip
        if (out / "search.json").exists():
            cmd = [sys.executable, "-m", "agent.cli", "search", "--resume", str(out), "--json"]
        summary, wall = run_search_json(cmd)
        keep = {k: v for k, v in summary.items() if isinstance(v, int | float | str)}
        log.add({"example": example, "kind": "search", "wall": wall, **keep})
    if log.find(example=example, kind="export") is None:
        target = work / f"{example}-export"
        cmd = [sys.executable, "-m", "agent.cli", "export", str(out), "--format", "onnx",
               "--out", str(target), "--max-drop", f"{bound:g}", "--tracking-uri", db,
               "--json"]  # fmt: skip
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            log.add({"example": example, "kind": "export", "wall": wall,
                     "error": proc.stderr.strip().splitlines()[-1:]})  # fmt: skip
            return
        data = json.loads(proc.stdout[proc.stdout.index("{") :])
        figures = {k: v for k, v in data.items() if isinstance(v, int | float | str)}
        log.add({"example": example, "kind": "export", "wall": wall, **figures})


def table(log: Log, examples: list[str], minutes: float, cpu: str) -> str:
    lines = [
        "# Bring-your-own models: searched, exported and timed by stage",
        "",
        f"{cpu}. Command: `python benchmarks/byo.py --minutes {minutes:g}`. ONNX Runtime CPU, "
        "1 thread, batch 1. Speedups are against the baseline timed right after each model "
        "(paired). Drops are in the metric's points (the encoder: cosine × 100).",
        "",
        "| example | bound | int8 everywhere | hand pipeline (best within bound) "
        "| search → export | export drop | vs hand |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    stage_lines = [
        "",
        "| example | units | params | load s | discovery s | probes s | search wall s | export s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    partial = False
    for ex in examples:
        bound = BOUNDS[ex]
        int8 = log.find(example=ex, kind="int8")
        hands = [r for r in log.rows if r.get("example") == ex and r.get("kind") == "hand"]
        within = [r for r in hands if r["drop"] <= bound]
        hand = max(within, key=lambda r: r["speedup"], default=None)
        export = log.find(example=ex, kind="export")
        stages = log.find(example=ex, kind="stages")
        search = log.find(example=ex, kind="search")
        partial |= export is None

        def fmt(row: dict[str, Any] | None) -> str:
            return "—" if row is None else f"{row['speedup']:.2f}x ({row['drop']:+.2f})"

        hand_text = "none within" if hands and hand is None else fmt(hand)
        if hand is not None:
            hand_text = f"{fmt(hand)} prune {hand['ratio']:g}"
        exported = "—" if export is None or "speedup" not in export else f"{export['speedup']:.2f}x"
        drop = "—" if export is None or "accuracy_drop" not in export else (
            f"{export['accuracy_drop']:+.2f}")  # fmt: skip
        ratio = (
            f"{export['speedup'] / hand['speedup']:.2f}x"
            if export and "speedup" in export and hand
            else "—"
        )
        lines.append(f"| {ex} | {bound:g} | {fmt(int8)} | {hand_text} | {exported} | {drop} | "
                     f"{ratio} |")  # fmt: skip
        if stages:
            probes = search.get("probe_seconds", 0.0) if search else 0.0
            wall = f"{search['wall']:.0f}" if search else "—"
            exp = f"{export['wall']:.0f}" if export else "—"
            stage_lines.append(
                f"| {ex} | {stages['units']} | {stages['params'] / 1e6:.1f} M | "
                f"{stages['load_s']:.0f} | {stages['discovery_s']:.1f} | {probes:.0f} | {wall} | "
                f"{exp} |"
            )
    if partial:
        lines.insert(2, "**Partial**: not every example has finished; rows so far.\n")
    return "\n".join(lines + stage_lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", nargs="+", default=list(BOUNDS), choices=list(BOUNDS))
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/byo.md"))
    parser.add_argument("--work", type=Path, default=Path("benchmarks/runs/byo"))
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()

    from runners.latency import cpu_model

    log = Log(args.out.with_suffix(".jsonl"))
    if not args.table_only:
        import torch

        torch.set_num_threads(1)
        for example in args.examples:
            references(example, log)
            search_and_export(example, args.minutes, args.work.resolve(), log)
            write_table(args.out, table(log, args.examples, args.minutes, cpu_model()))
    write_table(args.out, table(log, args.examples, args.minutes, cpu_model()))


if __name__ == "__main__":
    main()
