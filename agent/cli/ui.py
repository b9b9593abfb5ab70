"""``layerpilot ui``: the MLflow UI over this project's runs, on 127.0.0.1 by default."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from agent.cli.console import err_console

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_parser(sub: Any) -> None:
    p = sub.add_parser("ui", help="MLflow UI over this project's runs, on 127.0.0.1")
    p.add_argument("--port", type=port_number, default=5000, help="port (default 5000)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; anything else exposes the runs, "
        "unauthenticated, to whoever can reach it)",
    )
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///./mlflow.db)")
    p.add_argument("--json", action="store_true", help='print {"url": ...} once the server answers')
    p.set_defaults(func=run)


def port_number(text: str) -> int:
    """A TCP port, 1-65535 (argparse type)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 1-65535, got {value}")
    return value


def run(args: argparse.Namespace) -> int:
    from agent import ui
    from agent.tracking import default_tracking_uri

    uri = args.tracking_uri or default_tracking_uri(Path.cwd())
    if args.host not in LOOPBACK:
        err_console().print(
            f"[yellow]warning:[/yellow] the MLflow UI listens on {args.host}: anyone who can "
            "reach it can read and change these runs (it has no login)."
        )
    moved = ui.moved_artifacts(uri)
    if moved:
        err_console().print(f"[yellow]warning:[/yellow] {moved}")

    def announce(url: str) -> None:  # plain: a wrapped URL cannot be clicked
        if args.json:
            print(json.dumps({"url": url}), flush=True)
        else:
            print(f"MLflow UI: {url}  (Ctrl-C stops it)", file=sys.stderr, flush=True)

    return int(ui.run_ui(uri, host=args.host, port=args.port, announce=announce) or 0)
