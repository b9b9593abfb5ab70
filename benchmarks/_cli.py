"""What the benchmark scripts share: running ``layerpilot search`` as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any


def run_search_json(cmd: list[str]) -> tuple[dict[str, Any], float]:
    """Run a ``layerpilot search ... --json`` command line; its summary and its wall seconds."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout[proc.stdout.index("{") :]), wall
