"""The candidate cache: every evaluated strategy's `Outcome`, in a file that survives crashes.

One JSON object per line, ``{"scope": ..., "key": ..., "outcome": ...}``, appended and fsynced
as each outcome arrives, so a killed search loses at most the line being written. The scope is
a hash of what, besides the strategy, decides a measurement (`EvalSpec.cache_scope`): one file
can hold several workloads or runtimes and each cache sees only its own lines. Failed outcomes
are cached like the others: a strategy that crashed or timed out once is not retried.

Only the driver writes; workers never touch the file.

Example:
    >>> cache = CandidateCache(run_dir / "candidates.jsonl", spec.cache_scope())
    >>> cache.put(Outcome(strategy, "failed", error="TimeoutError: evaluation exceeded 300 s"))
    >>> CandidateCache(run_dir / "candidates.jsonl", spec.cache_scope()).get(strategy).ok
    False
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from runners.job import Outcome
from search_spaces import Strategy


def scope_hash(scope: Mapping[str, Any]) -> str:
    """A stable 16-hex-char hash of a scope dict (key order does not matter)."""
    compact = json.dumps(scope, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(compact.encode()).hexdigest()[:16]


class CandidateCache:
    """Outcomes of one scope, keyed by ``strategy.key()``, persisted as JSON lines at ``path``.

    Args:
        path: The JSON-lines file (created on the first `put`, with its parent folders).
        scope: What the outcomes depend on besides the strategy (workload, runtime, threads…).
    """

    def __init__(self, path: Path, scope: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self.scope = scope_hash(scope)
        self._outcomes: dict[str, Outcome] = {}
        self._needs_newline = False
        """The file does not end in a newline (a truncated last line): the next put adds one."""
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        self._needs_newline = bool(data) and not data.endswith(b"\n")
        for lineno, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                if entry["scope"] != self.scope:
                    continue
                outcome = Outcome.from_dict(entry["outcome"])
            except Exception as exc:  # a torn write, or a line from a future format
                warnings.warn(
                    f"{self.path}:{lineno}: skipping unreadable cache line "
                    f"({type(exc).__name__}: {exc})",
                    stacklevel=3,
                )
                continue
            self._outcomes[entry["key"]] = outcome

    def get(self, strategy: Strategy) -> Outcome | None:
        """The cached outcome of ``strategy`` in this scope, or None."""
        return self._outcomes.get(strategy.key())

    def put(self, outcome: Outcome) -> None:
        """Record ``outcome`` (replacing an earlier one of the same strategy) and fsync it."""
        key = outcome.strategy.key()
        line = json.dumps({"scope": self.scope, "key": key, "outcome": outcome.to_dict()})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            if self._needs_newline:
                f.write("\n")
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._needs_newline = False
        self._outcomes[key] = outcome

    def outcomes(self) -> list[Outcome]:
        """Every cached outcome of this scope, in the order first recorded."""
        return list(self._outcomes.values())

    def __len__(self) -> int:
        return len(self._outcomes)

    def __contains__(self, strategy: object) -> bool:
        return isinstance(strategy, Strategy) and strategy.key() in self._outcomes

    def __iter__(self) -> Iterator[Outcome]:
        return iter(self.outcomes())
