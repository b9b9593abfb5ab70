"""What the benchmark scripts share: running ``layerpilot search`` as a user would, and writing
a results table without losing the reading written under it by hand."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

READING = "\n## Reading"


def run_search_json(cmd: list[str]) -> tuple[dict[str, Any], float]:
    """Run a ``layerpilot search ... --json`` command line; its summary and its wall seconds."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout[proc.stdout.index("{") :]), wall


def write_table(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, keeping the hand-written section that starts at its
    ``## Reading`` heading (the script's figures are regenerated, the reading is not)."""
    old = path.read_text() if path.exists() else ""
    reading = old[old.index(READING) :] if READING in old else ""
    path.write_text(text.rstrip("\n") + "\n" + reading)


class Log:
    """The benchmark's rows, appended as they finish."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []

    def find(self, **key: Any) -> dict[str, Any] | None:
        return next((r for r in self.rows if all(r.get(k) == v for k, v in key.items())), None)

    def add(self, row: dict[str, Any]) -> dict[str, Any]:
        self.rows.append(row)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        return row


def measure_full(subject: Any, strategy: Any, recovery: str = "full") -> dict[str, Any]:
    """``strategy`` built with ``recovery`` (BatchNorm on 8 batches, as the search builds) and
    measured on ONNX Runtime CPU, batch 1, 1 thread, beside the baseline timed right after it
    (paired); the drop follows the workload's metric direction."""
    from runners.build import BuildConfig
    from runners.evaluate import EvalConfig, measure
    from runners.recovery import RECOVERY_PRESETS
    from runners.result import metric_drop
    from search_spaces import Strategy

    config = EvalConfig(build=BuildConfig(bn_batches=8, recovery=RECOVERY_PRESETS[recovery]))
    m = measure(subject, strategy, config)
    base = measure(subject, Strategy(), config)  # paired: the machine's load drifts
    return {
        "accuracy": m.accuracy,
        "drop": metric_drop(base.accuracy, m.accuracy, subject.workload.higher_is_better),
        "latency_ms": m.latency.median_ms,
        "spread": m.latency.spread,
        "baseline_latency_ms": base.latency.median_ms,
        "speedup": base.latency.median_ms / m.latency.median_ms,
    }
