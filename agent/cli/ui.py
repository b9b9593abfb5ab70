"""``layerpilot ui``: the MLflow UI over this project's runs, on 127.0.0.1 by default."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from agent.cli.console import err_console

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_parser(sub: Any) -> None:
    p = sub.add_parser("ui", help="MLflow UI over this project's runs, on 127.0.0.1")
    p.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; anything else exposes the runs, "
        "unauthenticated, to whoever can reach it)",
    )
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///./mlflow.db)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from agent import ui
    from agent.tracking import default_tracking_uri

    uri = args.tracking_uri or default_tracking_uri(Path.cwd())
    if args.host not in LOOPBACK:
        err_console().print(
            f"[yellow]warning:[/yellow] the MLflow UI listens on {args.host}: anyone who can "
            "reach it can read and change these runs (it has no login)."
        )
    return int(ui.run_ui(uri, host=args.host, port=args.port) or 0)
