"""Measure a strategy for real: build, compile for the runtime, time it, score it.

The records it returns (`Measurement`, `EvalResult`, defined in `runners.result` and importable
from here) are frozen values: what gets cached, tracked and reported. The live objects
(`Subject`, `Candidate`, compiled sessions) never leave this module.
"""

from __future__ import annotations

import math
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from runners.base import (
    Candidate,
    Compiled,
    RuntimeUnavailableError,
    check_precisions,
    covered_by,
    runtime_inputs,
)
from runners.build import BuildConfig, Subject, build_candidate
from runners.latency import LatencyConfig, LatencyStats, measure_compiled, measure_over_inputs
from runners.measure_lock import exclusive_measurement
from runners.onnx_export import OnnxExportError
from runners.result import EvalResult, Measurement
from search_spaces import Strategy
from search_spaces.actions import measure_extras, plan_precisions

#: Ideal throughput of each precision relative to fp32, for the FLOP-ideal speedup.
PRECISION_COST = {"fp32": 1.0, "fp16": 0.5, "int8": 0.25}


class EvaluationError(RuntimeError):
    """A candidate built but produced unusable results (NaN/inf outputs or metric)."""


class BaselineError(ValueError):
    """The unchanged model itself cannot be measured (it does not export, or its outputs or
    metric are NaN/inf): a fault of the model or its data, not of any strategy."""


@dataclass(frozen=True)
class EvalConfig:
    """How candidates are measured."""

    runtime: str = "onnxruntime-cpu"
    """Runtime name (``layerpilot runtimes`` lists them)."""
    threads: int = 1
    """Intra-op threads of the runtime; fixed and recorded (1 = one core per measurement)."""
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    """The timing protocol (warm-up, rounds, stability rule, batch size)."""
    build: BuildConfig = field(default_factory=BuildConfig)
    """How candidates are built (BatchNorm re-estimation, calibration size)."""
    eval_batch_size: int = 256
    """Batch size for the accuracy pass over the eval split (does not affect latency)."""
    time_latency: bool = True
    """Time every candidate on the runtime. False is the latency-free mode: accuracy is still
    measured on the runtime, but speed is the FLOP-ideal speedup and nothing is timed, so
    evaluations need no quiet core and can run in parallel."""

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be >= 1, got {self.eval_batch_size}")


def measure(
    subject: Subject, strategy: Strategy, config: EvalConfig, workdir: Path | None = None
) -> Measurement:
    """Build ``strategy``, compile it for ``config.runtime``, and measure it.

    Raises:
        BaselineError: ``strategy`` is the identity and the unchanged model cannot be measured
            (no candidate can then be compared with it).
    """
    if strategy.is_identity:
        try:
            return _measure(subject, strategy, config, workdir, "the unchanged model")
        except (EvaluationError, OnnxExportError) as exc:
            raise BaselineError(
                f"no strategy can be compared with the unchanged model "
                f"{subject.workload.name!r}: {exc}"
            ) from exc
    return _measure(subject, strategy, config, workdir, f"strategy {strategy.key()}")


def _measure(
    subject: Subject, strategy: Strategy, config: EvalConfig, workdir: Path | None, label: str
) -> Measurement:
    candidate = build_candidate(subject, strategy, config.build)
    with tempfile.TemporaryDirectory(prefix="layerpilot-") as tmp:
        measurement, _ = measure_candidate(
            subject, candidate, config, Path(workdir or tmp), label=label
        )
    return measurement


def measure_candidate(
    subject: Subject, candidate: Candidate, config: EvalConfig, workdir: Path, *, label: str
) -> tuple[Measurement, Compiled]:
    """Compile a built ``candidate`` for ``config.runtime`` in ``workdir`` and measure it.

    Returns the measurement and the compiled model (its files stay in ``workdir``).

    Raises:
        EvaluationError: NaN/inf outputs or metric (``label`` names the candidate, e.g.
            ``"strategy 50e30f82cdabd66d"``).
    """
    from runners import get_runtime
    from runners.metrics import count_params, flops_by_module

    runtime = get_runtime(config.runtime, threads=config.threads)
    compiled = runtime.compile(candidate, workdir)
    outputs = np.concatenate(
        [
            compiled.run(runtime_inputs(x))
            for x, _ in subject.workload.eval.batches(config.eval_batch_size)
        ]
    )
    if not np.isfinite(outputs).all():
        raise EvaluationError(f"{label} gives NaN/inf outputs on the eval split")
    accuracy = float(subject.workload.metric(outputs, subject.workload.eval.targets.numpy()))
    if not math.isfinite(accuracy):
        raise EvaluationError(f"{label}: the metric is {accuracy}")
    lock_wait, timing_s = 0.0, 0.0
    if not config.time_latency:
        latency = LatencyStats.not_timed()
    else:
        with exclusive_measurement() as lock_wait:
            start = time.perf_counter()
            if candidate.input_dependent:
                samples = subject.workload.eval.head(config.latency.inputs).inputs
                latency = measure_over_inputs(compiled, samples, config.latency)
            else:
                latency = measure_compiled(compiled, candidate.example_input, config.latency)
            timing_s = time.perf_counter() - start
    # what the actions measure of the built model (a gated model's decisions on the eval split)
    candidate.notes.update(
        measure_extras(candidate.model, subject.workload.eval.inputs, config.eval_batch_size)
    )
    per_module = flops_by_module(candidate.model, candidate.example_input)
    leaves = _leaf_flops(candidate.model, per_module)
    weighted = sum(
        f
        * PRECISION_COST[
            candidate.precisions.get(covered_by(m, candidate.precisions) or "", "fp32")
        ]
        for m, f in leaves.items()
    )
    info = {
        **compiled.info,
        **candidate.notes,
        "batch_size": config.latency.batch_size,
        "measure_lock_wait_s": round(lock_wait, 4),
        "timing_s": round(timing_s, 4),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    measurement = Measurement(
        accuracy=accuracy,
        latency=latency,
        flops=int(per_module.get("", sum(leaves.values()))),
        weighted_flops=float(weighted),
        params=count_params(candidate.model),
        size_bytes=int(compiled.size_bytes),
        info=info,
    )
    return measurement, compiled


def _leaf_flops(model: torch.nn.Module, per_module: dict[str, int]) -> dict[str, int]:
    """FLOPs of modules with no children (so the weighted sum counts each op once)."""
    leaves = {name for name, m in model.named_modules() if name and not any(m.children())}
    counted = {name: f for name, f in per_module.items() if name in leaves}
    rest = per_module.get("", 0) - sum(counted.values())
    if rest > 0:  # ops outside any leaf (attention matmuls in a parent's forward)
        counted[""] = rest
    return counted


def check_evaluable(subject: Subject, strategy: Strategy, config: EvalConfig) -> None:
    """Raise the user-facing error if ``strategy`` cannot be measured on ``config.runtime``.

    Checks the strategy against the model's units, the runtime's availability here, and the
    precisions it runs — all before anything is built or timed.
    """
    from runners import get_runtime

    plan = subject.resolve(strategy)
    runtime = get_runtime(config.runtime, threads=config.threads)
    reason = runtime.unavailable_reason()
    if reason:
        raise RuntimeUnavailableError(f"runtime {config.runtime!r} cannot run here: {reason}")
    check_precisions(plan_precisions(plan), runtime.precisions, config.runtime)


def evaluate(
    subject: Subject,
    strategy: Strategy,
    config: EvalConfig | None = None,
    baseline: Measurement | None = None,
) -> EvalResult:
    """Measure ``strategy`` and the unchanged model (unless ``baseline`` is given) in one run."""
    config = config or EvalConfig()
    check_evaluable(subject, strategy, config)  # fail before spending time on the baseline
    if baseline is None:
        baseline = measure(subject, Strategy(), config)
    candidate = measure(subject, strategy, config)
    return EvalResult.of(
        subject.workload.name,
        strategy,
        config.runtime,
        candidate,
        baseline,
        subject.workload.higher_is_better,
    )


def measurement_dict(m: Measurement) -> dict[str, Any]:
    """A JSON-ready view of a measurement (`Measurement.to_dict`)."""
    return m.to_dict()


__all__ = [
    "PRECISION_COST",
    "BaselineError",
    "EvalConfig",
    "EvalResult",
    "EvaluationError",
    "Measurement",
    "check_evaluable",
    "evaluate",
    "measure",
    "measure_candidate",
    "measurement_dict",
]
