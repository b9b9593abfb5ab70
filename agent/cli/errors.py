"""The one map from errors to exit codes: a user's mistake is one line and exit code 2.

Library code raises its own typed errors (`agent.export.SearchSourceError`,
`agent.resume.ResumeError`, `runners.export.ExportError`, ...) and never imports the CLI;
`exit_code` is where the CLI decides which of them are the user's to fix. Anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_USAGE = 2
"""Bad input: ``error: <what is wrong>`` on stderr, nothing half-written."""
EXIT_INTERRUPTED = 130
"""Ctrl-C (128 + SIGINT), also what an interrupted search returns."""


class CliError(Exception):
    """A bad combination of flags, found by the CLI itself: printed as ``error: ...``, exit
    code 2."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Every error type that means "the input is wrong": exit code `EXIT_USAGE`.

    Imported here, when a command failed, not when the CLI starts: ``layerpilot --help`` stays
    fast.
    """
    from agent.config import ConfigError
    from agent.export import CandidateChoiceError, SearchSourceError
    from agent.resume import ResumeError
    from agent.search_dir import SearchDirError
    from envs.reward import RewardError
    from envs.workloads import UnknownWorkloadError, WorkloadCacheError, WorkloadSpecError
    from runners import UnknownRuntimeError
    from runners.base import RuntimeUnavailableError, UnsupportedPrecisionError
    from runners.evaluate import BaselineError
    from runners.export import ExportError
    from runners.job import EvalSpecError
    from runners.precision_map import PrecisionMappingError
    from runners.quantize import MissingCalibrationError
    from search_spaces import StrategyError

    return (
        CliError,
        ConfigError,
        RewardError,
        ResumeError,
        SearchDirError,
        SearchSourceError,
        CandidateChoiceError,
        EvalSpecError,
        StrategyError,
        UnknownWorkloadError,
        WorkloadSpecError,
        WorkloadCacheError,
        UnknownRuntimeError,
        RuntimeUnavailableError,
        UnsupportedPrecisionError,
        PrecisionMappingError,
        MissingCalibrationError,
        ExportError,
        BaselineError,
    )


def exit_code(exc: BaseException) -> int | None:
    """The exit code for ``exc`` (None: not a user error, let it propagate)."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, user_errors()):
        return EXIT_USAGE
    return None


def message(exc: BaseException) -> str:
    """The one line shown for ``exc`` (a `KeyError`'s ``str`` would quote it)."""
    return str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
