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
