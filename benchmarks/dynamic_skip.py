"""Dynamic skip (LSTM controller) vs the best static skip, measured on ONNX Runtime CPU.

Usage:
    python benchmarks/dynamic_skip.py [--workloads digits-resnet mnist1d-transformer]
                                      [--alphas 0.5 1 2 4 8] [--recovery none|short|full]
                                      [--out FILE]

Per workload, every skippable block is gated by one controller (``dynamic_skip`` = α on each),
trained as a candidate build trains it (imitation of a per-input oracle, then REINFORCE; backbone
frozen), exported with ONNX ``If`` nodes and measured at batch 1, 1 thread, rotating over 64 eval
inputs. The comparison is the **best static skip** of each number of blocks: every subset when
there are at most 256, else greedy, each with BatchNorm re-estimation, chosen by *eval* accuracy
(an optimistic static baseline: it is picked on the data it is scored on). Dynamic accuracy is
compared with the static accuracy at the same mean executed-block count (linear between the two
neighbouring counts). Latencies: "ungated" is the unchanged model; the gated model's figure is the
mean over inputs of each input's median (controller and ``If`` overhead included). The ungated
model is timed again after every candidate, and each ratio divides by the ungated times taken
just before and just after that candidate, so a slow spell of the machine cannot flatter a ratio.

The **oracle** columns bound what any controller of this backbone could do at the same α: the
training oracle's per-input decisions (coordinate search on the training objective, against the
ungated model's own outputs; no labels) computed on the *eval* inputs themselves. It is not
deployable (it runs the ungated model first; shown without ``--recovery`` only); it shows whether
a gap to static comes from per-input gating itself or from the controller's predictions.

``--recovery LEVEL`` builds every candidate with that distillation fine-tune, as the search's
``--recovery`` does: static skips are recovered (the subset chosen without recovery), and a gated
backbone gets the joint fine-tune under its controller's decisions (:mod:`runners.build`). The
all-skipped row keeps its BatchNorm-only accuracy.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import write_table

from envs.workloads import get_workload
from runners.build import BuildConfig, Subject, build_candidate
from runners.evaluate import EvalConfig, Measurement, measure
from runners.latency import cpu_model
from runners.recovery import recovery_preset
from search_spaces import Strategy
from search_spaces.actions.dynamic_skip.training import GateTrainConfig, oracle_decisions

EXHAUSTIVE_LIMIT = 256


def _accuracy(subject: Subject, model: torch.nn.Module) -> float:
    split = subject.workload.eval
    with torch.no_grad():
        out = torch.cat([model(x) for x, _ in split.batches(256)]).numpy()
    return float(subject.workload.metric(out, split.targets.numpy()))


def best_static(subject: Subject, blocks: list[str]) -> dict[int, tuple[float, tuple[str, ...]]]:
    """Executed-block count -> (eval accuracy, skipped blocks) of the best static skip."""
    best: dict[int, tuple[float, tuple[str, ...]]] = {}

    def score(skipped: tuple[str, ...]) -> float:
        cand = build_candidate(subject, Strategy({b: {"skip": True} for b in skipped}))
        return _accuracy(subject, cand.model)

    if 2 ** len(blocks) <= EXHAUSTIVE_LIMIT:
        for k in range(len(blocks) + 1):
            for skipped in itertools.combinations(blocks, k):
                acc = score(skipped)
                executed = len(blocks) - k
                if executed not in best or acc > best[executed][0]:
                    best[executed] = (acc, skipped)
        return best
    skipped: tuple[str, ...] = ()
    best[len(blocks)] = (score(()), ())
    while len(skipped) < len(blocks):
        options = [(score((*skipped, b)), b) for b in blocks if b not in skipped]
        acc, chosen = max(options)
        skipped = (*skipped, chosen)
        best[len(blocks) - len(skipped)] = (acc, skipped)
    return best


def oracle(subject: Subject, strategy: Strategy) -> tuple[float, float]:
    """(mean executed blocks, eval accuracy) of the training oracle's decisions on eval inputs."""
    untrained = BuildConfig(gates=GateTrainConfig(warm_epochs=0, reinforce_steps=0))
    model = build_candidate(subject, strategy, untrained).model
    config = GateTrainConfig()
    alphas = torch.tensor(model.alphas)
    inputs = subject.workload.eval.inputs
    decisions, _ = oracle_decisions(model, inputs, alphas, config.temperature, config.oracle_sweeps)
    with torch.no_grad(), model.deciding(decisions):
        out = model(inputs).numpy()
    accuracy = subject.workload.metric(out, subject.workload.eval.targets.numpy())
    return float(decisions.sum(1).mean()), float(accuracy)


class PairedBaseline:
    """The ungated model's latency, measured again after every candidate, so that each ratio
    divides by the ungated figures taken just before and just after it: a slow spell of the
    machine then moves both sides of the ratio (one baseline at the start once came out 37 %
    slow and flattered every ratio of its workload)."""

    def __init__(self, subject: Subject, config: EvalConfig) -> None:
        self.subject, self.config = subject, config
        self.first = measure(subject, Strategy(), config)
        self.ms = [self.first.latency.expected_ms]

    def ratio(self, candidate: Measurement) -> float:
        before = self.ms[-1]
        self.ms.append(measure(self.subject, Strategy(), self.config).latency.expected_ms)
        return candidate.latency.expected_ms / ((before + self.ms[-1]) / 2)

    @property
    def median_ms(self) -> float:
        return float(np.median(self.ms))


def _interp(static: dict[int, float], executed: float) -> float:
    lo, hi = int(np.floor(executed)), int(np.ceil(executed))
    if lo == hi:
        return static[lo]
    w = executed - lo
    return (1 - w) * static[lo] + w * static[hi]


def run_workload(name: str, alphas: list[float], recovery: str, lines: list[str]) -> None:
    workload = get_workload(name)
    subject = Subject.prepare(workload)
    config = EvalConfig(build=BuildConfig(recovery=recovery_preset(recovery)))
    blocks = [u.name for u in subject.units if u.allows("dynamic_skip")]
    print(f"{name}: {len(blocks)} skippable blocks", flush=True)

    start = time.perf_counter()
    static = best_static(subject, blocks)
    static_s = time.perf_counter() - start
    paired = PairedBaseline(subject, config)
    static_latency: dict[int, Measurement] = {}
    static_ratio: dict[int, float] = {}
    for executed, (_, skipped) in sorted(static.items()):
        if 0 < executed < len(blocks):
            m = measure(subject, Strategy({b: {"skip": True} for b in skipped}), config)
            static_latency[executed] = m
            static_ratio[executed] = paired.ratio(m)

    rows = []
    static_acc = {k: v[0] for k, v in static.items()}
    static_acc.update({k: m.accuracy for k, m in static_latency.items()})  # recovered, if on
    for alpha in alphas:
        strategy = Strategy({b: {"dynamic_skip": alpha} for b in blocks})
        m = measure(subject, strategy, config)
        ratio = paired.ratio(m)
        gates = m.info["dynamic"]
        executed = float(gates["executed_blocks"])
        ref = _interp(static_acc, executed)
        lat = m.latency
        oracle_cells = "–"  # the oracle of a backbone without recovery
        if not config.build.recovery.enabled:
            oracle_executed, oracle_acc = oracle(subject, strategy)
            oracle_margin = oracle_acc - _interp(static_acc, oracle_executed)
            oracle_cells = f"{oracle_executed:.2f} / {oracle_acc:.2f} / {oracle_margin:+.2f}"
        rows.append(
            f"| {alpha:g} | {executed:.2f} | {m.accuracy:.2f} | {ref:.2f} | "
            f"{m.accuracy - ref:+.2f} | {lat.input_mean_ms:.3f} / "
            f"{lat.input_median_ms:.3f} / {lat.input_p90_ms:.3f} | "
            f"{ratio:.2f}x | {m.info['gate_training']['seconds']:.0f} | "
            f"{oracle_cells} |"
        )
        print(rows[-1], flush=True)

    base = paired.first
    base_ms = paired.median_ms
    lines.append(f"## {name} — {len(blocks)} gated blocks\n")
    lines.append(
        f"Ungated: accuracy {base.accuracy:.2f} %, latency {base_ms:.3f} ms (median of "
        f"{len(paired.ms)} measurements, {min(paired.ms):.3f}–{max(paired.ms):.3f}; each "
        "'vs ungated' divides by the mean of the two taken just before and just after it). "
        f"Best static skips: {static_s:.0f} s to search.\n"
    )
    lines.append(
        "| controller α | executed blocks (mean) | accuracy % | best static % at same count | "
        "margin (pts) | latency mean / median / p90 ms | vs ungated | train s | "
        "oracle: executed / accuracy % / margin |"
    )
    lines.append("|---:|---:|---:|---:|---:|---|---:|---:|---|")
    lines.extend(rows)
    lines.append("")
    lines.append("| blocks executed | best static skip | accuracy % | latency ms | vs ungated |")
    lines.append("|---:|---|---:|---:|---:|")
    for executed, (_, skipped) in sorted(static.items(), reverse=True):
        acc = static_acc[executed]
        lat = static_latency.get(executed)
        if lat is not None:
            timing = f"{lat.latency.median_ms:.3f} | {static_ratio[executed]:.2f}x"
        elif executed == len(blocks):
            timing = f"{base_ms:.3f} | 1.00x"
        else:
            timing = "not measured | –"
        lines.append(f"| {executed} | {', '.join(skipped) or '–'} | {acc:.2f} | {timing} |")
    lines.append("")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=["digits-resnet", "mnist1d-transformer"])
    parser.add_argument("--alphas", nargs="+", type=float, default=[0.5, 1.0, 2.0, 4.0, 8.0])
    parser.add_argument("--recovery", default="none", help="none, short or full")
    parser.add_argument("--out", type=Path, help="default: results/dynamic_skip[_LEVEL].md")
    args = parser.parse_args()
    recovery = recovery_preset(args.recovery)
    suffix = "" if args.recovery == "none" else f"_{args.recovery}"
    args.out = args.out or Path(f"benchmarks/results/dynamic_skip{suffix}.md")
    torch.set_num_threads(1)
    lines = [
        "# Dynamic skip vs static skip (ONNX Runtime CPU, batch 1, 1 thread)\n",
        f"{cpu_model() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}. Command: `python benchmarks/dynamic_skip.py "
        f"--workloads {' '.join(args.workloads)} --alphas {' '.join(map(str, args.alphas))} "
        f"--recovery {args.recovery}` (distillation steps: {recovery.steps})\n",
    ]
    for name in args.workloads:
        run_workload(name, args.alphas, args.recovery, lines)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_table(args.out, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
