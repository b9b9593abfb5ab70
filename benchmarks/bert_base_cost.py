"""What a search of a BERT-base-sized encoder costs on this machine, stage by stage.

Usage:
    python benchmarks/bert_base_cost.py [--out benchmarks/results/bert_base_cost.md]
        [--layers 12] [--hidden 768] [--recovery-steps 6]

A ``transformers.BertModel`` of BERT-base's shape (12 layers, hidden 768, 12 heads, FFN 3072,
vocabulary 30522: 109 M parameters; random weights, nothing downloaded) as the sentence encoder
of ``examples/hf_encoder.py`` (sequence 64, cosine to its own embeddings), timed through the
stages a search runs, each once: unit discovery (`runners.build.Subject.prepare`), the probe
table's size after identical layers share probes, the baseline measurement (ONNX export, ORT
session, eval split, latency protocol), one candidate at the ``none`` level, and a few steps of
the recovery fine-tune (2 and 2 + k steps), whose per-step cost gives the ``short`` and
``full`` levels'. The search's cost is then what its schedule spends on them, extrapolated
(labelled as such).
ONNX Runtime CPU, 1 thread, batch 1.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import write_table  # noqa: E402


def encoder_workload(layers: int, hidden: int) -> Any:
    import torch
    from transformers import BertConfig, BertModel

    import examples.hf_encoder as ex
    from envs.workloads import DataSplit, Workload

    config = BertConfig(
        vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=hidden // 64, intermediate_size=4 * hidden,
        max_position_embeddings=512, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, attn_implementation="eager",
    )  # fmt: skip

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = BertModel(config, add_pooling_layer=False)

        forward = ex.SentenceEncoder.forward

    torch.manual_seed(0)
    model = Encoder().eval()
    tokens = ex.corpus(384, seed=2)
    with torch.no_grad():
        targets = torch.cat(
            [model(tokens["input_ids"][i : i + 64], tokens["attention_mask"][i : i + 64])
             for i in range(0, 384, 64)]
        )  # fmt: skip

    def part(s: slice) -> DataSplit:
        return DataSplit({k: v[s] for k, v in tokens.items()}, targets[s])

    return Workload(
        name=f"bert-{layers}x{hidden}",
        model=model,
        example_input={k: v[:1] for k, v in tokens.items()},
        train=part(slice(0, 256)),
        eval=part(slice(256, 384)),
        metric=ex.cosine,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/bert_base_cost.md")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--recovery-steps", type=int, default=6)
    args = parser.parse_args()

    from agent.probes import probe_twins
    from envs.cost import collective_probes, probe_plan
    from runners.build import BuildConfig, Subject, build_candidate
    from runners.evaluate import EvalConfig, measure
    from runners.latency import cpu_model
    from runners.recovery import RECOVERY_PRESETS
    from search_spaces import Strategy
    from search_spaces.space import DecisionSpace

    stages: list[tuple[str, float, str]] = []

    def timed(name: str, fn: Callable[[], Any], note: str = "") -> Any:
        start = time.perf_counter()
        value = fn()
        stages.append((name, time.perf_counter() - start, note))
        print(f"{name}: {stages[-1][1]:.1f} s {note}", flush=True)
        return value

    workload = timed("model and targets", lambda: encoder_workload(args.layers, args.hidden))
    params = sum(p.numel() for p in workload.model.parameters())
    subject = timed("unit discovery", lambda: Subject.prepare(workload))
    space = DecisionSpace(subject.units)
    plan = probe_plan(space)
    distinct = len(set(probe_twins(space, plan).values())) + len(collective_probes(space))
    stages.append(("probe table", 0.0, f"{len(plan)} probes, {distinct} measured (shared)"))
    config = EvalConfig(build=BuildConfig(bn_batches=8))
    base = timed("baseline measurement", lambda: measure(subject, Strategy(), config))
    ffn = [u.name for u in subject.units if u.allows("prune") and "intermediate" in u.name]
    halved = Strategy({name: {"prune": 0.5} for name in ffn})
    none = timed("one candidate at none", lambda: measure(subject, halved, config), "FFN halved")
    none_s = stages[-1][1]
    k = args.recovery_steps
    plain = BuildConfig(bn_batches=8)

    def recovered(steps: int) -> BuildConfig:
        return replace(plain, recovery=replace(RECOVERY_PRESETS["full"], steps=steps))

    timed("build, no recovery", lambda: build_candidate(subject, halved, plain))
    timed("build + 2 recovery steps", lambda: build_candidate(subject, halved, recovered(2)))
    timed(
        f"build + {2 + k} recovery steps",
        lambda: build_candidate(subject, halved, recovered(2 + k)),
    )
    per_step = (stages[-1][1] - stages[-2][1]) / k  # the difference: set-up cost cancels
    setup = stages[-2][1] - stages[-3][1] - 2 * per_step
    short_s, full_s = (none_s + setup + n * per_step for n in (40, 400))
    search_h = (distinct * none_s + 67 * none_s + 24 * short_s + 9 * full_s) / 3600
    speedup = base.latency.median_ms / none.latency.median_ms
    lines = [
        f"# What a search of a BERT-base-sized encoder costs ({cpu_model()})",
        "",
        f"Command: `python benchmarks/bert_base_cost.py --layers {args.layers} --hidden "
        f"{args.hidden}`. {params / 1e6:.0f} M parameters, sequence 64, "
        f"{len(subject.units)} units; baseline {base.latency.median_ms:.1f} ms on ONNX Runtime "
        f"CPU, 1 thread, batch 1; FFN width halved: {speedup:.2f}x, cosine {none.accuracy:.1f} "
        "without recovery.",
        "",
        "| stage | seconds | note |",
        "|---|---:|---|",
        *[f"| {name} | {seconds:.1f} | {note} |" for name, seconds, note in stages],
        "",
        f"**Extrapolated** from those figures, not measured end to end: a recovery step costs "
        f"{per_step:.2f} s (the difference of the two recovered builds) after {setup:.0f} s of "
        f"set-up (the teacher's outputs), so a `short` candidate (40 steps) about {short_s:.0f} s "
        f"and a `full` one (400 steps) about {full_s:.0f} s; the probe table ({distinct} probes "
        f"at `none`) about {distinct * none_s / 60:.0f} min. A search measuring 67 candidates "
        "at `none`, 24 at `short` and 9 at `full` (the shape of the HF encoder example's "
        f"30-minute search, `benchmarks/results/byo.md`) would take about {search_h:.1f} h "
        "on this machine.",
    ]
    write_table(args.out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
