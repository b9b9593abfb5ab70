"""Resuming a search that was killed outright (SIGKILL, a crash, a lost machine).

Its records are read back from its directory, measured outcomes that had not landed yet come
from its cache, the agent is restored (PPO from its last checkpoint, then told every record),
and new candidates join the same MLflow parent run until the budget is spent
(``run_search(config, resume=True)``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from agent.config import ConfigError, SearchConfig
from agent.records import CandidateRecord
from agent.search_dir import SearchDir, SearchDirError, SearchState


class ResumeError(ValueError):
    """A search directory that cannot be resumed (the message says why)."""


def resume_state(out: Path) -> tuple[SearchConfig, SearchState]:
    """The config and state of the search in ``out``.

    Raises:
        ResumeError: ``out`` is not a search directory, its ``search.json`` is unreadable, or it
            stopped before anything was evaluated.
    """
    sdir = SearchDir(out)
    if not sdir.exists():
        raise ResumeError(f"cannot resume {out}: not a search directory (no search.json in it)")
    try:
        state = sdir.read_state()
        config = state.search_config().with_overrides(out=Path(out))
    except SearchDirError as exc:
        raise ResumeError(f"cannot resume {out}: {exc}") from None
    except ConfigError as exc:
        raise ResumeError(f"cannot resume {out}: {sdir.state_path} is unreadable ({exc})") from None
    if not state.parent_run_id:
        raise ResumeError(
            f"cannot resume {out}: it stopped before its MLflow run was created, so nothing was "
            "evaluated; start the search again"
        )
    return config, state


@dataclass(frozen=True)
class Reopened:
    """A killed search, read back and marked running again."""

    sdir: SearchDir
    """Its directory."""
    state: SearchState
    """Its state, ``RUNNING`` with this resumption appended to ``resumed``."""
    records: list[CandidateRecord]
    """Every candidate it had recorded, in order."""


def reopen(config: SearchConfig) -> Reopened:
    """The search in ``config.out``, ready to continue with ``config`` (whose budget, executor
    and timeout may differ from the saved ones; see `agent.cli.search.RESUME_FLAGS`).

    A last record that the kill cut in half is dropped from the file.

    Raises:
        ResumeError: No directory given, it cannot be resumed (`resume_state`), or it finished
            its budget already.
    """
    if config.out is None:
        raise ResumeError("resume needs the search directory (config.out)")
    _, state = resume_state(config.out)
    sdir = SearchDir(config.out)
    sdir.trim_torn_record()
    records = sdir.records()
    proposed = len({r.strategy.key() for r in records})
    if state.status == "FINISHED" and proposed >= config.budget:
        raise ResumeError(
            f"cannot resume {config.out}: it finished its budget of {proposed} candidates; "
            f"give a larger --budget to extend it"
        )
    now = datetime.now().isoformat(timespec="seconds")
    state = replace(
        state,
        status="RUNNING",
        config=config.to_dict(),
        eval_spec=sdir.eval_spec(state),  # an old directory gets the spec its config implies
        resumed=(*state.resumed, now),
    )
    return Reopened(sdir, state, records)
