"""What the CLI prints: rich tables on stdout, progress and errors on stderr, JSON on request."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from typing import Any, TextIO

from rich.console import Console


def console() -> Console:
    """Stdout console; wide when piped (rich would fold tables to 80 columns)."""
    return Console(width=None if sys.stdout.isatty() else 160)


def err_console() -> Console:
    return Console(stderr=True)


def print_json(data: Any) -> None:
    """``data`` as indented JSON with sorted keys (``--json``); a NaN is ``null``."""
    from runners.serde import strict_dumps

    print(strict_dumps(data, indent=2, sort_keys=True))


def print_error(text: str) -> None:
    """``error: <text>`` on stderr, the text shown as is (no rich markup)."""
    from rich.markup import escape

    err_console().print(f"[bold red]error:[/bold red] {escape(text)}", highlight=False)


def stderr_progress(enabled: bool) -> Callable[[str], None] | None:
    """A callback printing dim progress lines on stderr (None when disabled, e.g. ``--json``)."""
    if not enabled:
        return None
    err = err_console()
    return lambda msg: err.print(f"[dim]{msg}[/dim]")


def fmt(x: float | None, spec: str = ".2f", suffix: str = "") -> str:
    """``x`` formatted, or an en dash when it is missing or not finite."""
    return (
        "–"
        if x is None or (isinstance(x, float) and not math.isfinite(x))
        else f"{x:{spec}}{suffix}"
    )


def json_stdout() -> TextIO:
    """Point file descriptor 1 at stderr for the rest of the process, so that nothing written
    there (by Ray or its C++ core, even at exit) can corrupt ``--json``; returns a file on the
    real stdout for the JSON itself."""
    sys.stdout.flush()
    real = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    return real
