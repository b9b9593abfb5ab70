"""What each transform buys on each built-in workload, measured on ONNX Runtime CPU.

Usage:
    python benchmarks/transforms.py [--workloads digits-resnet mnist1d-cnn ...] [--out FILE]

Per workload, one row per strategy: uniform prune 25/50/75 %, int8 everywhere, skip 1 / 2
blocks (the blocks whose removal costs least accuracy, chosen greedily on the train split),
low-rank 50 % wherever it applies, prune 50 % + int8, and int8 + the two skips. Columns:
accuracy and drop, latency median / p90 (batch 1, 1 thread), measured speedup, FLOP-ideal
speedup (FLOPs ratio with int8 ops counted at ¼ cost), and realization (measured ÷ ideal). The
baseline is measured at the start and again at the end of each workload: their difference is the
repeatability figure. Only BatchNorm re-estimation (16 calibration batches) is applied after
structural changes — no fine-tuning.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import write_table

from envs.workloads import get_workload, list_workloads
from runners.build import Subject
from runners.evaluate import EvalConfig, Measurement, measure
from runners.latency import LatencyConfig, cpu_model
from search_spaces import Strategy


def cheapest_skips(subject: Subject, n: int) -> list[str]:
    """The ``n`` skippable blocks whose single removal loses least train accuracy (torch)."""
    from runners.build import build_candidate

    train = subject.workload.train.head(512)
    scores = []
    for unit in subject.units:
        if not unit.allows("skip"):
            continue
        cand = build_candidate(subject, Strategy.from_dict({unit.name: {"skip": True}}))
        with torch.no_grad():
            out = cand.model(train.inputs).numpy()
        scores.append((-subject.workload.metric(out, train.targets.numpy()), unit.index, unit.name))
    return [name for _, _, name in sorted(scores)[:n]]


def strategies(subject: Subject) -> dict[str, Strategy]:
    rows = {
        "prune 25 %": {"*": {"prune": 0.25}},
        "prune 50 %": {"*": {"prune": 0.5}},
        "prune 75 %": {"*": {"prune": 0.75}},
        "int8 everywhere": {"*": {"precision": "int8"}},
    }
    skips = cheapest_skips(subject, 2)
    for n in (1, 2):
        if len(skips) >= n:
            rows[f"skip {n} block{'s' * (n > 1)} ({', '.join(skips[:n])})"] = {
                b: {"skip": True} for b in skips[:n]
            }
    if any(u.allows("lowrank") for u in subject.units):
        rows["lowrank 50 %"] = {"*": {"lowrank": 0.5}}
    rows["prune 50 % + int8"] = {"*": {"prune": 0.5, "precision": "int8"}}
    if len(skips) == 2:
        rows["int8 + skip 2 blocks"] = {"*": {"precision": "int8"}} | {
            b: {"skip": True} for b in skips
        }
    return {k: Strategy.from_dict(v) for k, v in rows.items()}


def machine() -> str:
    cpu = cpu_model() or platform.processor() or platform.machine()
    import onnxruntime

    return (
        f"{cpu}, {os.cpu_count()} cores; Python {platform.python_version()}, torch "
        f"{torch.__version__}, onnxruntime {onnxruntime.__version__}"
    )


def run_workload(name: str, config: EvalConfig) -> str:
    started = time.perf_counter()
    subject = Subject.prepare(get_workload(name, progress=lambda m: print(m, file=sys.stderr)))
    base = measure(subject, Strategy(), config)
    lines = [
        f"### {name}",
        "",
        "| strategy | accuracy % | drop | latency ms (median / p90) | speedup | FLOP-ideal | "
        "realization | params | size |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        _row("baseline (fp32)", base, base),
    ]
    for label, strategy in strategies(subject).items():
        print(f"  {name}: {label}", file=sys.stderr, flush=True)
        lines.append(_row(label, measure(subject, strategy, config), base))
    again = measure(subject, Strategy(), config)
    diff = abs(again.latency.median_ms - base.latency.median_ms) / base.latency.median_ms
    lines += [
        "",
        f"Repeatability: baseline median {base.latency.median_ms:.3f} ms at the start, "
        f"{again.latency.median_ms:.3f} ms at the end ({100 * diff:.1f} % apart); "
        f"spread (p90−p10)/median {100 * base.latency.spread:.1f} %. "
        f"Workload wall time {time.perf_counter() - started:.0f} s.",
        "",
    ]
    return "\n".join(lines)


def _row(label: str, m: Measurement, base: Measurement) -> str:
    speedup = base.latency.median_ms / m.latency.median_ms
    ideal = base.weighted_flops / m.weighted_flops
    return (
        f"| {label} | {m.accuracy:.2f} | {base.accuracy - m.accuracy:+.2f} | "
        f"{m.latency.median_ms:.3f} / {m.latency.p90_ms:.3f} | {speedup:.2f}x | {ideal:.2f}x | "
        f"{speedup / ideal:.2f} | {m.params / 1e3:.1f}k | {m.size_bytes / 1e3:.0f} kB |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workloads", nargs="*", default=list_workloads())
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown here")
    args = parser.parse_args()
    torch.set_num_threads(2)
    config = EvalConfig(runtime="onnxruntime-cpu", threads=1, latency=LatencyConfig(batch_size=1))
    parts = [
        "## Transforms benchmark (ONNX Runtime CPU, batch 1, 1 thread)",
        "",
        f"Machine: {machine()}. Command: `python benchmarks/transforms.py`.",
        "",
    ]
    for name in args.workloads:
        parts.append(run_workload(name, config))
        print(parts[-1], flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_table(args.out, "\n".join(parts))


if __name__ == "__main__":
    main()
