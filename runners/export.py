"""Export one strategy as a deployable model: build, fully recover, measure, write the files.

What lands in the output directory (written to a hidden sibling first and renamed at the end,
so a failed export leaves nothing half-written; the staging folder of an export that was killed
is removed by the next export to the same place, `sweep_stale_staging`):

- the model: ``model.onnx`` (``onnx``: the graph exactly as measured, the strategy's per-unit
  precisions included; ``onnx-int8``: every unit int8, Q/DQ), ``model.pt`` (``torch``: a state
  dict, loaded with ``weights_only=True`` into the structure rebuilt from ``strategy.json``, see
  :func:`load_torch_export`), or ``model.engine`` plus its ``model.onnx`` (``tensorrt``);
- ``strategy.json``: the strategy (the input of ``layerpilot evaluate`` and of the rebuild);
- ``export.json``: every figure of the report, machine-readable, and what it was exported from;
- ``report.md``: accuracy, latency (median, p90), speedup, size and FLOPs of the baseline and
  the optimized model, measured here on the same runtime, with the machine they ran on.

Long module: the export pipeline, its file formats, its report and the torch rebuild read the
same `ExportedModel`.
"""

from __future__ import annotations

import glob
import json
import os
import platform
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from runners.base import RuntimeUnavailableError
from runners.build import Subject, build_candidate
from runners.evaluate import EvalConfig, measure, measure_candidate
from runners.latency import cpu_model
from runners.metrics import format_count
from runners.recovery import RecoveryConfig
from runners.result import Measurement, metric_drop
from search_spaces import Strategy, apply_plan
from search_spaces.actions import with_everywhere

FORMATS: dict[str, str] = {
    "onnx": "onnxruntime-cpu",
    "onnx-int8": "onnxruntime-cpu",
    "torch": "torch-cpu",
    "tensorrt": "tensorrt",
}
"""Export format -> the runtime its report is measured on."""
EVERYWHERE: dict[str, tuple[str, Any]] = {"onnx-int8": ("precision", "int8")}
"""Export format -> the (action, value) it sets on every unit that allows it, replacing the
strategy's own values of that action (``onnx-int8``: every unit int8)."""

EXPORT_FILE = "export.json"
STRATEGY_FILE = "strategy.json"
REPORT_FILE = "report.md"
TORCH_FILE = "model.pt"


class ExportError(ValueError):
    """The export cannot be done as asked (the message says why and what to do)."""


@dataclass(frozen=True)
class ExportedModel:
    """What one export wrote and measured (the frozen record; ``export.json`` holds it)."""

    format: str
    out: Path
    files: dict[str, str]
    """Role (``model``, ``onnx``, ``engine``, ``strategy``, ``report``) -> file name in ``out``."""
    strategy: Strategy
    """The strategy as exported (``onnx-int8`` adds int8 to every unit)."""
    runtime: str
    candidate: Measurement
    baseline: Measurement
    recovery: RecoveryConfig
    source: dict[str, Any] = field(default_factory=dict)
    """Where the strategy came from (search, candidate index, workload)."""
    seconds: float = 0.0
    """Wall time of the export (build, recovery, measurement, writing)."""
    higher_is_better: bool = True
    """The workload's metric direction (the drop is positive when the metric got worse)."""

    @property
    def drop(self) -> float:
        """How much worse the exported model scores than the original, in metric points."""
        return metric_drop(self.baseline.accuracy, self.candidate.accuracy, self.higher_is_better)

    @property
    def speedup(self) -> float:
        return self.baseline.latency.expected_ms / self.candidate.latency.expected_ms

    @property
    def model_path(self) -> Path:
        return self.out / self.files["model"]

    def summary(self) -> dict[str, Any]:
        """The headline figures, flat (MLflow metrics, CLI output). Here ``latency_median_ms``
        is the plain median of the timed runs (a candidate record's per-input median of a
        dynamic-skip model is ``latency_input_median_ms``)."""
        c, b = self.candidate, self.baseline
        return {
            "accuracy": c.accuracy,
            "baseline_accuracy": b.accuracy,
            "accuracy_drop": self.drop,
            "latency_ms": c.latency.expected_ms,
            "latency_median_ms": c.latency.median_ms,
            "latency_p90_ms": c.latency.p90_ms,
            "latency_spread": c.latency.spread,
            "baseline_latency_ms": b.latency.expected_ms,
            "baseline_latency_p90_ms": b.latency.p90_ms,
            "speedup": self.speedup,
            "size_bytes": c.size_bytes,
            "baseline_size_bytes": b.size_bytes,
            "flops": c.flops,
            "baseline_flops": b.flops,
            "params": c.params,
            "baseline_params": b.params,
            "export_seconds": self.seconds,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "files": self.files,
            "strategy": self.strategy.to_dict(),
            "runtime": self.runtime,
            "summary": self.summary(),
            "candidate": self.candidate.to_dict(),
            "baseline": self.baseline.to_dict(),
            "recovery": asdict(self.recovery),
            "source": self.source,
            "machine": _machine(),
        }


def check_format(fmt: str, *, threads: int = 1) -> str:
    """The runtime ``fmt`` is measured on; raise before anything is built if it cannot run.

    Raises:
        ExportError: Unknown format.
        RuntimeUnavailableError: The format's runtime cannot run here (no GPU, no TensorRT).
    """
    from runners import get_runtime

    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    name = FORMATS[fmt]
    reason = get_runtime(name, threads=threads).unavailable_reason()
    if reason is not None:
        raise RuntimeUnavailableError(f"--format {fmt} needs the {name} runtime: {reason}")
    return name


def export_candidate(
    subject: Subject,
    strategy: Strategy,
    fmt: str,
    out: Path,
    *,
    config: EvalConfig,
    recovery: RecoveryConfig,
    baseline: Measurement | None = None,
    source: Mapping[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> ExportedModel:
    """Build ``strategy`` with ``recovery``, measure it and the baseline, write ``out``.

    Args:
        subject: The prepared workload the strategy applies to.
        strategy: What to export (validated against the subject's units first).
        fmt: One of :data:`FORMATS`.
        out: The output directory; it must not exist or be empty.
        config: How to measure (threads, latency protocol, BatchNorm re-estimation); the runtime
            is the format's (:data:`FORMATS`).
        recovery: The distillation fine-tune applied before measuring and writing.
        baseline: The unchanged model's measurement on the format's runtime, when the caller
            already has it (measured here otherwise).
        source: Provenance recorded in ``export.json``.
        progress: Called with a line per stage.

    Raises:
        ExportError: Unknown format, or ``out`` is not empty.
        RuntimeUnavailableError: The format's runtime cannot run here.
        search_spaces.errors.StrategyError: The strategy does not fit the model.
    """
    start = time.perf_counter()
    say = progress or (lambda _line: None)
    runtime = check_format(fmt, threads=config.threads)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"--out {out} exists and is not an empty directory; choose a new one")
    if fmt in EVERYWHERE:
        strategy = with_everywhere(strategy, *EVERYWHERE[fmt])
    subject.resolve(strategy)  # a strategy that does not fit fails before any work
    config = replace(config, runtime=runtime, build=replace(config.build, recovery=recovery))
    out.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_staging(out)
    staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(out), dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result is a normal directory
    try:
        if baseline is None:
            say(f"measuring the baseline on {runtime}")
            baseline = measure(subject, Strategy(), config)
        say(f"building with {recovery.steps} recovery steps")
        candidate = build_candidate(subject, strategy, config.build)
        say(f"measuring the optimized model on {runtime}")
        work = staging / "work"
        measurement, compiled = measure_candidate(
            subject, candidate, config, work, label=f"strategy {strategy.key()}"
        )
        files = _write_model(fmt, candidate.model, compiled, work, staging)
        shutil.rmtree(work, ignore_errors=True)  # not every runtime writes files
        strategy.save(staging / STRATEGY_FILE)
        files.update(strategy=STRATEGY_FILE, report=REPORT_FILE)
        exported = ExportedModel(
            format=fmt,
            out=out,
            files=files,
            strategy=strategy,
            runtime=runtime,
            candidate=measurement,
            baseline=baseline,
            recovery=recovery,
            source={**dict(source or {}), "workload": subject.workload.name},
            seconds=time.perf_counter() - start,
            higher_is_better=subject.workload.higher_is_better,
        )
        (staging / EXPORT_FILE).write_text(json.dumps(exported.to_dict(), indent=2) + "\n")
        (staging / REPORT_FILE).write_text(render_report(exported))
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return exported


def _staging_prefix(out: Path) -> str:
    """``.<name>.partial-<host>-<pid>-``: whose staging folder it is, so a later export can tell
    a live one from one a killed process left."""
    return f".{out.name}.partial-{_host()}-{os.getpid()}-"


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())


def sweep_stale_staging(out: Path) -> list[Path]:
    """Remove the staging folders of exports to ``out`` that were killed (SIGKILL, a crash)
    on this host: their process is gone, so nothing will finish or remove them. Folders of
    live processes, of other hosts (a shared file system) or of unknown shape are kept.
    Returns what was removed."""
    mine = f".{out.name}.partial-{_host()}-"
    removed = []
    for path in out.parent.glob(f"{glob.escape(mine)}*"):
        pid = path.name.removeprefix(mine).split("-", 1)[0]
        if path.is_dir() and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _write_model(
    fmt: str, model: nn.Module, compiled: Any, work: Path, staging: Path
) -> dict[str, str]:
    if fmt == "torch":
        torch.save(model.state_dict(), staging / TORCH_FILE)
        return {"model": TORCH_FILE}
    onnx_path = Path(compiled.onnx_path)
    _copy_onnx(onnx_path, staging / "model.onnx")
    if fmt == "tensorrt":
        shutil.copyfile(compiled.engine_path, staging / "model.engine")
        return {"model": "model.engine", "onnx": "model.onnx"}
    return {"model": "model.onnx"}


def _copy_onnx(source: Path, target: Path) -> None:
    """Copy an ONNX file as one self-contained file (external data folded in)."""
    import onnx

    model = onnx.load(str(source), load_external_data=True)
    onnx.save(model, str(target), save_as_external_data=False)


def load_torch_export(out: Path, subject: Subject) -> nn.Module:
    """The exported PyTorch model of ``out``, rebuilt without unpickling code.

    The structure comes from applying ``strategy.json`` to ``subject``'s model; the weights are
    the state dict in ``model.pt``, read with ``torch.load(weights_only=True)``.

    Raises:
        ExportError: ``out`` holds no torch export.
    """
    out = Path(out)
    if not (out / TORCH_FILE).is_file() or not (out / STRATEGY_FILE).is_file():
        raise ExportError(f"{out} holds no torch export ({TORCH_FILE} + {STRATEGY_FILE})")
    strategy = Strategy.load(out / STRATEGY_FILE)
    plan = subject.resolve(strategy)
    model, _ = apply_plan(subject.model, subject.units, plan, subject.workload.example_input)
    state = torch.load(out / TORCH_FILE, weights_only=True, map_location="cpu")
    model.load_state_dict(state)
    return model.eval()


def render_report(exported: ExportedModel) -> str:
    """``report.md``: baseline vs optimized on the same runtime, and how it was produced."""
    c, b = exported.candidate, exported.baseline
    machine = _machine()
    rows = [
        ("accuracy %", f"{b.accuracy:.2f}", f"{c.accuracy:.2f}", f"{c.accuracy - b.accuracy:+.2f}"),
        (
            "latency median ms",
            f"{b.latency.median_ms:.3f}",
            f"{c.latency.median_ms:.3f}",
            f"{b.latency.median_ms / c.latency.median_ms:.2f}x",
        ),
        (
            "latency p90 ms",
            f"{b.latency.p90_ms:.3f}",
            f"{c.latency.p90_ms:.3f}",
            f"{b.latency.p90_ms / c.latency.p90_ms:.2f}x",
        ),
        (
            "size",
            format_count(b.size_bytes) + "B",
            format_count(c.size_bytes) + "B",
            f"{b.size_bytes / max(c.size_bytes, 1):.2f}x",
        ),
        (
            "FLOPs",
            format_count(b.flops),
            format_count(c.flops),
            f"{b.flops / max(c.flops, 1):.2f}x",
        ),
        (
            "params",
            format_count(b.params),
            format_count(c.params),
            f"{b.params / max(c.params, 1):.2f}x",
        ),
    ]
    if c.latency.inputs:
        rows.insert(
            2,
            (
                "latency mean over inputs ms",
                f"{b.latency.expected_ms:.3f}",
                f"{c.latency.expected_ms:.3f}",
                f"{exported.speedup:.2f}x",
            ),
        )
    lines = [
        f"# layerpilot export: {exported.source.get('workload', '')} ({exported.format})",
        "",
        f"**{exported.speedup:.2f}x faster** at **{exported.drop:+.2f} points** "
        f"accuracy drop on `{exported.runtime}`, batch {c.info.get('batch_size', 1)}, "
        f"{c.info.get('threads', 1)} thread(s).",
        "",
        "| | baseline | optimized | change |",
        "|---|---:|---:|---:|",
        *(f"| {name} | {base} | {opt} | {change} |" for name, base, opt, change in rows),
        "",
        f"Latency: median of {c.latency.runs} timed runs, spread (p90/median − 1) "
        f"{c.latency.spread:.1%}{'' if c.latency.stable else ' — NOT stable'}. "
        "Speedup uses the median (the mean over inputs for input-dependent models).",
        "",
        "## Files",
        *(f"- `{name}` ({role})" for role, name in exported.files.items()),
        "",
        "## How it was made",
        f"- Strategy: `{exported.strategy.key()}`",
        f"- Recovery: {_recovery_line(exported.recovery)}",
        *(f"- Source {key}: `{value}`" for key, value in exported.source.items()),
        f"- Machine: {machine['cpu'] or machine['machine']}, {machine['cores']} cores, "
        f"Python {machine['python']}, torch {machine['torch']}",
        f"- Export wall time: {exported.seconds:.0f} s",
        "",
    ]
    return "\n".join(lines)


def _recovery_line(r: RecoveryConfig) -> str:
    if not r.enabled:
        return "none (BatchNorm re-estimation only)"
    return (
        f"{r.steps} distillation steps from the original model (T={r.temperature}, "
        f"alpha={r.alpha}, lr={r.lr}, batch {r.batch_size}, seed {r.seed})"
    )


def _machine() -> dict[str, Any]:
    return {
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
