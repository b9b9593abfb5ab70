"""`SearchDir`: a search directory, and the only code that reads or writes its files.

Layout::

    search.json         `SearchState`: resolved config, EvalSpec, MLflow ids, status, summary
                        (rewritten, atomically, as the search goes)
    candidates.jsonl    one `CandidateRecord` per line, appended and fsynced as each one lands
    cache.jsonl         measured outcomes (the candidate cache; ``--cache`` shares one)
    checkpoints/        RLlib checkpoints (ppo)
    cost_table.json     the measured per-(unit, choice) cost table (ppo with probes)
    best_strategy.json  the best candidate's strategy
    report/             report.md + pareto.png

The driver writes; export, report and resume read, all through this class. A directory made
before the `EvalSpec` was persisted has no ``eval_spec`` in its ``search.json``:
`SearchDir.eval_spec` derives it from the saved config exactly as the search did
(`agent.config.eval_spec`).

Example:
    >>> sdir = SearchDir(tmp_path / "s")  # doctest: +SKIP
    >>> sdir.write_state(SearchState(config=config.to_dict(), eval_spec=spec))  # doctest: +SKIP
    >>> with sdir.candidate_log() as log:  # doctest: +SKIP
    ...     log.append(record)
    >>> sdir.records() == [record] and sdir.eval_spec() == spec  # doctest: +SKIP
    True
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Literal, cast, get_args

from agent.records import CandidateRecord

if TYPE_CHECKING:
    from agent.config import SearchConfig
    from runners.cache import CandidateCache
    from runners.job import EvalSpec
    from search_spaces import Strategy

SearchStatus = Literal["RUNNING", "FINISHED", "KILLED", "FAILED"]
"""Where a search stands: running (or killed outright), done, stopped by a signal, crashed."""

_STATE_KEYS = ("config", "status", "mlflow", "baseline", "summary", "runs", "resumed", "eval_spec")


class SearchDirError(ValueError):
    """A search directory that is missing or unreadable (the message names the file and why)."""


class DamagedRecordWarning(UserWarning):
    """A line of ``candidates.jsonl`` is not a candidate record: it is skipped, the others are
    used (a resumed search lands that candidate again from its cache)."""


@dataclass(frozen=True)
class TrackingIds:
    """Where a search is tracked in MLflow (``search.json``'s ``mlflow`` entry)."""

    tracking_uri: str | None = None
    """The MLflow tracking URI the search logged to."""
    experiment_id: str | None = None
    """The experiment holding its parent run."""
    parent_run_id: str | None = None
    """The search's parent run (its candidates are nested under it)."""

    def to_dict(self) -> dict[str, str | None]:
        return {
            "tracking_uri": self.tracking_uri,
            "experiment_id": self.experiment_id,
            "parent_run_id": self.parent_run_id,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrackingIds:
        return cls(
            tracking_uri=data.get("tracking_uri"),
            experiment_id=None if data.get("experiment_id") is None else str(data["experiment_id"]),
            parent_run_id=data.get("parent_run_id"),
        )


@dataclass(frozen=True)
class SearchState:
    """The content of ``search.json``: what a search is, where it is tracked, how it ended.

    Build a changed state with `dataclasses.replace` and write it with `SearchDir.write_state`.
    """

    config: dict[str, Any]
    """The resolved `SearchConfig` as ``SearchConfig.to_dict()`` wrote it (`search_config`
    parses it)."""
    status: SearchStatus | None = "RUNNING"
    """Where the search stands (``None``: not recorded, e.g. a hand-made directory)."""
    mlflow: TrackingIds | None = None
    """Its MLflow ids; ``None`` until the parent run exists."""
    eval_spec: EvalSpec | None = None
    """How candidates are measured; ``None`` in a directory written before it was saved (see
    `SearchDir.eval_spec`)."""
    baseline: dict[str, Any] | None = None
    """The unchanged model's measurement as flat metrics (``accuracy``, ``latency_ms``, ...)."""
    summary: dict[str, Any] | None = None
    """The summary metrics (`agent.wrapup.summarize`), written when the search stops."""
    runs: dict[str, str] = field(default_factory=dict)
    """MLflow run id of each candidate, by its index (as a string)."""
    resumed: tuple[str, ...] = ()
    """When the search was resumed (ISO timestamps), oldest first."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Keys this version does not know (a newer layerpilot's), kept so a rewrite loses nothing."""

    @property
    def parent_run_id(self) -> str | None:
        return None if self.mlflow is None else self.mlflow.parent_run_id

    def search_config(self) -> SearchConfig:
        """The search's `SearchConfig`, parsed from `config`.

        Raises:
            agent.config.ConfigError: The saved config is not a valid search config.
        """
        from agent.config import config_from_dict

        return config_from_dict(self.config)

    def to_dict(self) -> dict[str, Any]:
        """``search.json``'s JSON object (the keys earlier versions wrote, plus ``eval_spec``)."""
        data: dict[str, Any] = {
            **self.extra,
            "config": self.config,
            "mlflow": None if self.mlflow is None else self.mlflow.to_dict(),
        }
        if self.status is not None:
            data["status"] = self.status
        if self.eval_spec is not None:
            data["eval_spec"] = self.eval_spec.to_dict()
        if self.baseline is not None:
            data["baseline"] = self.baseline
        if self.summary is not None:
            data["summary"] = self.summary
        if self.runs:
            data["runs"] = self.runs
        if self.resumed:
            data["resumed"] = list(self.resumed)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchState:
        """Read ``search.json``'s object, of this version or an earlier one.

        Raises:
            ValueError: A key has the wrong type (the message names it), or the EvalSpec is
                unreadable (`runners.job.EvalSpecError`).
        """
        from runners.job import EvalSpec

        if not isinstance(data, Mapping):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        config = data.get("config")
        if not isinstance(config, Mapping):
            raise ValueError("'config' must be an object")
        status = data.get("status")
        if status is not None and status not in get_args(SearchStatus):
            raise ValueError(f"'status' {status!r} is none of {', '.join(get_args(SearchStatus))}")
        mlflow = data.get("mlflow")
        if mlflow is not None and not isinstance(mlflow, Mapping):
            raise ValueError("'mlflow' must be an object or null")
        spec = data.get("eval_spec")
        return cls(
            config=dict(config),
            status=cast(SearchStatus | None, status),
            mlflow=TrackingIds.from_dict(mlflow) if mlflow else None,
            eval_spec=None if spec is None else EvalSpec.from_dict(spec),
            baseline=_optional_dict(data, "baseline"),
            summary=_optional_dict(data, "summary"),
            runs={str(k): str(v) for k, v in (_optional_dict(data, "runs") or {}).items()},
            resumed=tuple(str(t) for t in data.get("resumed") or ()),
            extra={k: v for k, v in data.items() if k not in _STATE_KEYS},
        )


def _optional_dict(data: Mapping[str, Any], key: str) -> dict[str, Any] | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(f"{key!r} must be an object")
    return dict(value)


class SearchDir:
    """One search directory (it need not exist yet: the driver creates it).

    Args:
        path: The directory (``SearchConfig.out``, or the one a user names).
    """

    STATE = "search.json"
    CANDIDATES = "candidates.jsonl"
    CACHE = "cache.jsonl"
    BEST_STRATEGY = "best_strategy.json"
    COST_TABLE = "cost_table.json"
    REPORT = "report"
    CHECKPOINTS = "checkpoints"

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"SearchDir({str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def state_path(self) -> Path:
        return self.path / self.STATE

    @property
    def candidates_path(self) -> Path:
        return self.path / self.CANDIDATES

    @property
    def cache_path(self) -> Path:
        """The search's own candidate cache (``SearchConfig.cache`` may name a shared one)."""
        return self.path / self.CACHE

    @property
    def best_strategy_path(self) -> Path:
        return self.path / self.BEST_STRATEGY

    @property
    def cost_table_path(self) -> Path:
        return self.path / self.COST_TABLE

    @property
    def report_dir(self) -> Path:
        return self.path / self.REPORT

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / self.CHECKPOINTS

    def exists(self) -> bool:
        """Whether this is a search directory (it has a ``search.json``)."""
        return self.state_path.is_file()

    # ---- search.json

    def read_state(self) -> SearchState:
        """The directory's `SearchState`.

        Raises:
            SearchDirError: No ``search.json`` here, or it is unreadable.
        """
        if not self.exists():
            raise SearchDirError(f"{self.path} is not a search directory (no search.json in it)")
        try:
            return SearchState.from_dict(json.loads(self.state_path.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise SearchDirError(f"{self.state_path} is unreadable ({exc})") from None

    def write_state(self, state: SearchState) -> None:
        """Replace ``search.json`` atomically (creating the directory): a kill never leaves it
        half-written."""
        self.path.mkdir(parents=True, exist_ok=True)
        self._write_json(self.state_path, state.to_dict())

    def eval_spec(self, state: SearchState | None = None) -> EvalSpec:
        """How this search measured its candidates: the persisted `EvalSpec`, or, for a
        directory written before it was, the one its config implies.

        Raises:
            SearchDirError: ``search.json`` is missing or unreadable, or (old directory) its
                config is not a valid search config.
        """
        from agent.config import ConfigError, eval_spec

        state = self.read_state() if state is None else state
        if state.eval_spec is not None:
            return state.eval_spec
        try:
            return eval_spec(state.search_config())
        except (ConfigError, ValueError) as exc:
            raise SearchDirError(
                f"{self.state_path} has no eval_spec and its config cannot be read ({exc})"
            ) from None

    # ---- candidates.jsonl

    def records(self) -> list[CandidateRecord]:
        """The candidates in ``candidates.jsonl``, in evaluation order.

        A truncated last line (a crash mid-append) is ignored; a bad line elsewhere is skipped
        with a `DamagedRecordWarning` naming ``path:line``, and every other record is kept. A
        search directory without the file (stopped before its first candidate) has none.

        Raises:
            SearchDirError: There is neither ``candidates.jsonl`` nor ``search.json``.
        """
        path = self.candidates_path
        if not path.is_file():
            if self.exists():
                return []
            raise SearchDirError(f"{path} does not exist: is {self.path} a search directory?")
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        records = []
        for number, line in enumerate(lines, start=1):
            try:
                records.append(CandidateRecord.from_dict(json.loads(line)))
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                if number == len(lines):
                    break
                skipped = f"{path}:{number}: not a candidate record ({exc!s:.120}); skipped"
                warnings.warn(skipped, DamagedRecordWarning, stacklevel=2)
        return records

    def trim_torn_record(self) -> None:
        """Cut a last line that a kill left half-written, so appends start on a fresh line."""
        path = self.candidates_path
        if not path.exists():
            return
        data = path.read_bytes()
        keep = data.rfind(b"\n") + 1
        if keep < len(data):
            with path.open("r+b") as f:
                f.truncate(keep)

    def candidate_log(self) -> CandidateLog:
        """``candidates.jsonl`` opened for appending (a torn last line is cut first)."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.trim_torn_record()
        return CandidateLog(self.candidates_path)

    # ---- the other files

    def cache(self, scope: Mapping[str, Any], shared: Path | None = None) -> CandidateCache:
        """The candidate cache of ``scope``: ``shared`` (``--cache``) or `cache_path`."""
        from runners.cache import CandidateCache

        return CandidateCache(shared or self.cache_path, scope)

    def write_best_strategy(self, strategy: Strategy) -> Path:
        strategy.save(self.best_strategy_path)
        return self.best_strategy_path

    def write_cost_table(self, table: Mapping[str, Any]) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        self._write_json(self.cost_table_path, table)
        return self.cost_table_path

    @staticmethod
    def _write_json(path: Path, data: Any) -> None:
        from runners.serde import strict_dumps

        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(strict_dumps(data, indent=2, sort_keys=True))
        tmp.replace(path)


class CandidateLog:
    """``candidates.jsonl`` open for appending: each record is flushed and fsynced as it is
    written, so a killed search loses at most the line being written (`SearchDir.records`
    skips it, `SearchDir.trim_torn_record` cuts it).

    Use as a context manager, or call `close`.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = path.open("a")

    def append(self, record: CandidateRecord) -> None:
        if self._file is None:
            raise ValueError(f"{self.path} is closed")
        self._file.write(json.dumps(record.to_dict(), default=str) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> CandidateLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
