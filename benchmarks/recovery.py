"""Accuracy recovery (distillation fine-tune) and the exported model vs a hand pipeline.

Usage:
    python benchmarks/recovery.py --search digits-resnet=DIR [mnist1d-cnn=DIR ...]
                                  [--ratios 0.5 0.625 0.75 0.875] [--front 6] [--out FILE]

Per workload (ONNX Runtime CPU, batch 1, 1 thread; BatchNorm re-estimation on 8 batches, as the
search builds candidates):

1. **Recovery levels.** Uniform structured pruning of every prunable unit at each ratio (the
   strategies of increasing aggressiveness), plus the middle ratio with int8 everywhere: accuracy
   with no recovery, ``short`` and ``full`` distillation (``runners.recovery.RECOVERY_PRESETS``),
   recovery wall time, and measured latency.
2. **int8 after recovery.** The int8 row is calibrated on the fully recovered weights; its loss
   against the same structure in fp32 (also fully recovered) bounds what quantization-aware
   fine-tuning could win back.
3. **Hand pipeline.** What a practitioner does instead: uniform pruning at the best single ratio
   + BatchNorm re-estimation + full KD fine-tune (+ int8 when it is faster): the fastest ratio
   within 1 point of the baseline.
4. **Search → export.** The search's candidates that are within ``--front-drop`` points without
   recovery and on its Pareto front, fastest first (``--front`` of them), each fully recovered
   and re-measured; the fastest within 1 point is exported with ``runners.export`` and
   re-evaluated from the written ``model.onnx`` in a fresh session (the reproducibility check).

Rows are appended to ``<out>.jsonl`` as they finish, so an interrupted run keeps its figures;
``--table-only`` re-renders the markdown from them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import write_table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.report import load_records, pareto_front
from envs.workloads import get_workload
from runners.build import BuildConfig, Subject
from runners.evaluate import EvalConfig, measure
from runners.export import export_candidate
from runners.latency import LatencyConfig, cpu_model, measure_compiled
from runners.onnxruntime import OrtCompiled, _open_session
from runners.recovery import RECOVERY_PRESETS
from search_spaces import Strategy
from search_spaces.actions import with_everywhere

LEVELS = ("none", "short", "full")
MAX_DROP = 1.0


def uniform_prune(subject: Subject, ratio: float) -> Strategy:
    return Strategy({u.name: {"prune": ratio} for u in subject.units if u.allows("prune")})


def run_measure(subject: Subject, strategy: Strategy, level: str) -> dict[str, Any]:
    config = EvalConfig(build=BuildConfig(bn_batches=8, recovery=RECOVERY_PRESETS[level]))
    m = measure(subject, strategy, config)
    recovery = m.info.get("recovery") or {}
    return {
        "accuracy": m.accuracy,
        "latency_ms": m.latency.median_ms,
        "latency_p90_ms": m.latency.p90_ms,
        "spread": m.latency.spread,
        "recovery_seconds": recovery.get("seconds", 0.0),
    }


class Log:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []

    def find(self, **key: Any) -> dict[str, Any] | None:
        for row in self.rows:
            if all(row.get(k) == v for k, v in key.items()):
                return row
        return None

    def add(self, row: dict[str, Any]) -> dict[str, Any]:
        self.rows.append(row)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        return row


def levels_rows(subject: Subject, log: Log, ratios: list[float]) -> None:
    wl = subject.workload.name
    if log.find(workload=wl, kind="baseline") is None:
        log.add({"workload": wl, "kind": "baseline", **run_measure(subject, Strategy(), "none")})
    rows: list[tuple[str, Strategy]] = [(f"prune {r:g}", uniform_prune(subject, r)) for r in ratios]
    for name, strategy in rows:
        _levels(subject, log, name, strategy)
    # int8 on top of the hand pipeline's ratio: the fastest within 1 point after full recovery
    base = log.find(workload=wl, kind="baseline")
    assert base is not None
    full = [
        (log.find(workload=wl, kind="level", strategy=n, level="full"), r)
        for n, r in zip([n for n, _ in rows], ratios, strict=True)
    ]
    ok = [
        (row["latency_ms"], r)
        for row, r in full
        if row and base["accuracy"] - row["accuracy"] <= MAX_DROP
    ]
    ratio = min(ok)[1] if ok else min(ratios)
    int8 = with_everywhere(uniform_prune(subject, ratio), "precision", "int8")
    _levels(subject, log, f"prune {ratio:g} + int8", int8)


def _levels(subject: Subject, log: Log, name: str, strategy: Strategy) -> None:
    wl = subject.workload.name
    for level in LEVELS:
        if log.find(workload=wl, kind="level", strategy=name, level=level) is None:
            result = run_measure(subject, strategy, level)
            print(f"{wl} {name} {level}: {result}", flush=True)
            log.add(
                {
                    "workload": wl,
                    "kind": "level",
                    "strategy": name,
                    "level": level,
                    "key": strategy.key(),
                    **result,
                }
            )


def search_rows(
    subject: Subject, log: Log, search_dir: Path, front: int, front_drop: float, out_dir: Path
) -> None:
    wl, name = subject.workload.name, search_dir.name
    records = [r for r in load_records(search_dir) if r.ok and np.isfinite(r.speedup)]
    pool = [r for r in records if r.accuracy_drop <= front_drop]
    on_front = [pool[i] for i in pareto_front([(r.accuracy, r.speedup) for r in pool])]
    chosen = sorted(on_front, key=lambda r: -r.speedup)[:front]
    for record in chosen:
        if log.find(workload=wl, kind="search", search=name, index=record.index) is None:
            result = run_measure(subject, record.strategy, "full")
            print(f"{wl} search #{record.index}: {result}", flush=True)
            log.add(
                {
                    "workload": wl,
                    "kind": "search",
                    "search": name,
                    "index": record.index,
                    "search_speedup": record.speedup,
                    "search_drop": record.accuracy_drop,
                    "key": record.strategy.key(),
                    **result,
                }
            )
    if log.find(workload=wl, kind="export", search=name) is not None:
        return
    base = log.find(workload=wl, kind="baseline")
    assert base is not None
    done = [
        row
        for row in log.rows
        if row.get("workload") == wl
        and row.get("kind") == "search"
        and row.get("search") == name
        and base["accuracy"] - row["accuracy"] <= MAX_DROP
    ]
    if not done:
        return
    best = min(done, key=lambda row: row["latency_ms"])
    strategy = next(r.strategy for r in records if r.index == best["index"])
    target = out_dir / f"export-{wl}-{name}"
    exported = export_candidate(
        subject,
        strategy,
        "onnx",
        target,
        config=EvalConfig(build=BuildConfig(bn_batches=8)),
        recovery=RECOVERY_PRESETS["full"],
        source={"search": str(search_dir)},
    )
    # reproducibility: a fresh session on the written file
    session = _open_session(target / "model.onnx", 1, ["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name
    outputs = np.concatenate(
        [session.run(None, {feed: x.numpy()})[0] for x, _ in subject.workload.eval.batches(256)]
    )
    accuracy = float(subject.workload.metric(outputs, subject.workload.eval.targets.numpy()))
    compiled = OrtCompiled("onnxruntime-cpu", 0, {}, target / "model.onnx", session)
    latency = measure_compiled(compiled, subject.workload.example_input, LatencyConfig())
    log.add(
        {
            "workload": wl,
            "kind": "export",
            "search": name,
            "index": best["index"],
            **exported.summary(),
            "reeval_accuracy": accuracy,
            "reeval_latency_ms": latency.median_ms,
            "reeval_latency_p90_ms": latency.p90_ms,
        }
    )


def render(log: Log, workloads: list[str], command: str) -> str:
    full = RECOVERY_PRESETS["full"]
    lines = [
        "# Accuracy recovery and the exported model (ONNX Runtime CPU, batch 1, 1 thread)",
        "",
        f"{platform.machine()}, {cpu_model() or ''}, {os.cpu_count()} cores. Command: `{command}`",
        "",
        "Recovery presets: "
        + ", ".join(f"{k} = {v.steps} KD steps" for k, v in RECOVERY_PRESETS.items())
        + f" (batch {full.batch_size}, T={full.temperature}, alpha={full.alpha}). "
        "Latency is the median of the protocol's runs.",
    ]
    for wl in workloads:
        base = log.find(workload=wl, kind="baseline")
        if base is None:
            continue
        b_acc, b_lat = base["accuracy"], base["latency_ms"]
        lines += [
            "",
            f"## {wl}",
            "",
            f"Baseline: {b_acc:.2f} %, {b_lat:.3f} ms.",
            "",
            "| strategy | latency ms | speedup | acc none | acc short | acc full | "
            "short s | full s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        names = []
        for row in log.rows:
            if (
                row.get("workload") == wl
                and row.get("kind") == "level"
                and row["strategy"] not in names
            ):
                names.append(row["strategy"])
        for name in names:
            cells = {
                lv: log.find(workload=wl, kind="level", strategy=name, level=lv) for lv in LEVELS
            }
            full = cells["full"] or cells["none"]
            assert full is not None
            acc = [f"{c['accuracy']:.2f}" if c else "–" for c in cells.values()]
            secs = [
                f"{c['recovery_seconds']:.0f}" if c else "–"
                for c in (cells["short"], cells["full"])
            ]
            lines.append(
                f"| {name} | {full['latency_ms']:.3f} | {b_lat / full['latency_ms']:.2f}x | "
                f"{' | '.join(acc)} | {' | '.join(secs)} |"
            )
        # int8 after recovery
        int8 = [n for n in names if n.endswith("+ int8")]
        for name in int8:
            q = log.find(workload=wl, kind="level", strategy=name, level="full")
            f = log.find(
                workload=wl, kind="level", strategy=name.removesuffix(" + int8"), level="full"
            )
            if q and f:
                lines += [
                    "",
                    f"**int8 after full recovery** ({name}): {q['accuracy']:.2f} % vs "
                    f"{f['accuracy']:.2f} % fp32 ({q['accuracy'] - f['accuracy']:+.2f} pts) — "
                    f"the most quantization-aware fine-tuning could win back; latency "
                    f"{q['latency_ms']:.3f} vs {f['latency_ms']:.3f} ms fp32.",
                ]
        # hand pipeline
        hand = [(log.find(workload=wl, kind="level", strategy=n, level="full"), n) for n in names]
        ok = [(r, n) for r, n in hand if r and b_acc - r["accuracy"] <= MAX_DROP]
        hand_best = min(ok, key=lambda t: t[0]["latency_ms"]) if ok else None
        if hand_best:
            r, n = hand_best
            lines += [
                "",
                f"**Hand pipeline** (uniform prune at the best single ratio + BN "
                f"re-estimation + full KD, + int8 when faster): {n}, {r['accuracy']:.2f} % "
                f"({r['accuracy'] - b_acc:+.2f}), **{b_lat / r['latency_ms']:.2f}x**.",
            ]
        searched: list[str] = []
        for row in log.rows:
            if (
                row.get("workload") == wl
                and row.get("kind") == "search"
                and row.get("search") not in searched
            ):
                searched.append(row["search"])
        for name in searched:
            srows = [
                r
                for r in log.rows
                if r.get("workload") == wl and r.get("kind") == "search" and r.get("search") == name
            ]
            lines += [
                "",
                f"Search `{name}`: its fastest Pareto candidates, fully recovered:",
                "",
                "| candidate | search speedup | search drop | full-recovery acc | drop | "
                "speedup now |",
                "|---:|---:|---:|---:|---:|---:|",
            ]
            for r in sorted(srows, key=lambda r: -r["search_speedup"]):
                lines.append(
                    f"| #{r['index']} | {r['search_speedup']:.2f}x | {r['search_drop']:.2f} | "
                    f"{r['accuracy']:.2f} | {b_acc - r['accuracy']:.2f} | "
                    f"{b_lat / r['latency_ms']:.2f}x |"
                )
            ex = log.find(workload=wl, kind="export", search=name)
            if ex:
                lines += [
                    "",
                    f"**Exported** (candidate #{ex['index']}, `runners.export`, full "
                    f"recovery): {ex['accuracy']:.2f} % ({-ex['accuracy_drop']:+.2f}), "
                    f"{ex['latency_median_ms']:.3f} ms, **{ex['speedup']:.2f}x** "
                    f"(spread {ex['latency_spread']:.1%}). Re-evaluated from `model.onnx` in a "
                    f"fresh session: {ex['reeval_accuracy']:.2f} %, "
                    f"{ex['reeval_latency_ms']:.3f} ms "
                    f"({ex['reeval_latency_ms'] / ex['latency_median_ms'] - 1:+.1%}).",
                ]
                if hand_best:
                    r, n = hand_best
                    lines.append(
                        f"Search export vs hand pipeline at ≤ 1 point: {ex['speedup']:.2f}x vs "
                        f"{b_lat / r['latency_ms']:.2f}x."
                    )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--search", nargs="*", default=[], help="WORKLOAD=SEARCH_DIR (repeat for more searches)"
    )
    parser.add_argument("--workloads", nargs="*", default=None)
    parser.add_argument("--ratios", nargs="*", type=float, default=[0.5, 0.625, 0.75, 0.875])
    parser.add_argument("--front", type=int, default=6)
    parser.add_argument("--front-drop", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/recovery.md"))
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    searches: dict[str, list[str]] = {}
    for item in args.search:
        workload, _, directory = item.partition("=")
        searches.setdefault(workload, []).append(directory)
    workloads = args.workloads or list(searches) or ["digits-resnet", "mnist1d-cnn"]
    log = Log(args.out.with_suffix(".jsonl"))
    command = "python benchmarks/recovery.py " + " ".join(sys.argv[1:])
    if not args.table_only:
        exports = Path(tempfile.mkdtemp(prefix="recovery-exports-"))
        for wl in workloads:
            start = time.perf_counter()
            subject = Subject.prepare(get_workload(wl))
            levels_rows(subject, log, args.ratios)
            for directory in searches.get(wl, []):
                search_rows(subject, log, Path(directory), args.front, args.front_drop, exports)
            print(f"{wl}: {time.perf_counter() - start:.0f} s", flush=True)
            write_table(args.out, render(log, workloads, command))
    text = render(log, workloads, command)
    write_table(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
