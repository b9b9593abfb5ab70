"""The ``layerpilot`` command line: one module per command, a shared console, one error map.

Every command that prints results takes ``--json`` for a machine-readable form with stable keys.
Bad input ends with ``error: <what is wrong>`` on stderr and exit code 2
(`agent.cli.errors.exit_code` decides which errors are the user's); nothing is half-written.

Each command module (`workloads`, `profile`, `evaluate`, `runtimes`, `search`, `report`, `ui`,
`export`) has ``add_parser(sub)`` and ``run(args) -> int``, and imports its heavy libraries
inside ``run``, so ``layerpilot --help`` stays fast.
"""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any

from agent.cli import evaluate, export, profile, report, runtimes, search, ui, workloads
from agent.cli.console import err_console, print_error
from agent.cli.errors import EXIT_INTERRUPTED, EXIT_USAGE, CliError, exit_code, message

COMMANDS = (workloads, profile, evaluate, runtimes, search, report, ui, export)
"""The command modules, in the order ``--help`` lists them."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="layerpilot",
        description="Search, layer by layer, how to make a trained network fast while it stays "
        "accurate — every candidate built and measured for real.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``layerpilot ARGV`` and return its exit code (user errors: `EXIT_USAGE`)."""
    args = build_parser().parse_args(argv)
    previous = _terminate_like_ctrl_c()
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        err_console().print("interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:
        code = exit_code(exc)
        if code is None:
            raise
        print_error(message(exc))
        return code
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _terminate_like_ctrl_c() -> Any:
    """SIGTERM raises `KeyboardInterrupt`, as Ctrl-C does, so every command cleans up after
    itself (an export's staging folder, an evaluation's temporary one) instead of dying where
    it stands. Returns the handler it replaced (None: not the main thread, nothing changed)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, terminate)


__all__ = ["EXIT_INTERRUPTED", "EXIT_USAGE", "CliError", "build_parser", "main"]
