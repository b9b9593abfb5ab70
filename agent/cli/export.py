"""``layerpilot export``: build a search's best (or chosen) candidate, fully recovered, as a
deployable model, and log it to MLflow under the search (`agent.export` does the work)."""

from __future__ import annotations

import argparse
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

from agent.cli.console import console, print_json, stderr_progress
from agent.cli.errors import CliError


def add_parser(sub: Any) -> None:
    from runners.export import FORMATS
    from runners.recovery import RECOVERY_PRESETS

    p = sub.add_parser(
        "export",
        help="build a search's best (or chosen) candidate, fully recovered, as a deployable model",
        description="Rebuild a candidate from its strategy, fine-tune it by distillation, "
        "measure it against the baseline, and write the model, strategy.json, export.json and "
        "report.md to --out; the export is logged to MLflow under the search.",
    )
    p.add_argument("target", help="a search directory, or an MLflow run id (search or candidate)")
    p.add_argument(
        "--candidate",
        default="best",
        help="'best' (fastest within --max-drop, default) or a candidate index",
    )
    p.add_argument(
        "--max-drop",
        type=float,
        default=1.0,
        help="'best' considers candidates within this many accuracy points (default 1.0)",
    )
    p.add_argument("--format", required=True, choices=list(FORMATS), help="what to write")
    p.add_argument("--out", type=Path, required=True, help="output directory (new or empty)")
    p.add_argument(
        "--recovery",
        default="full",
        choices=list(RECOVERY_PRESETS),
        help="distillation fine-tune before export (default full)",
    )
    p.add_argument(
        "--rerank",
        type=int,
        default=0,
        metavar="K",
        help="with --candidate best: fully recover the K fastest Pareto candidates, fastest "
        "first, and export the first within --max-drop (the search's accuracy is a proxy)",
    )
    p.add_argument("--register", metavar="NAME", help="register the model under NAME in MLflow")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: the search's)")
    p.add_argument("--no-mlflow", action="store_true", help="write files only, log nothing")
    p.add_argument(
        "--model",
        metavar="PATH:FUNCTION",
        help="a bring-your-own search's model file, when it moved or changed since the search "
        "ran: its code is imported (run), so name only a file you trust",
    )
    p.add_argument("--json", action="store_true", help="print export.json's summary only")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from agent.export import choose_candidate, export, load_source, prepare, rerank
    from runners.export import FORMATS, check_format
    from runners.recovery import recovery_preset

    if args.register and args.no_mlflow:
        raise CliError("--register needs MLflow; drop --no-mlflow")
    if args.rerank < 0:
        raise CliError(f"--rerank must be >= 0, got {args.rerank}")
    if not (math.isfinite(args.max_drop) and args.max_drop >= 0):
        raise CliError(f"--max-drop must be a finite number of points >= 0, got {args.max_drop}")
    check_format(args.format)  # no GPU / no TensorRT: fail before loading anything
    source = load_source(args.target, args.tracking_uri)
    if args.model is not None:
        if source.spec.model is None:
            raise CliError(
                f"--model: {args.target} searched the built-in {source.spec.name!r}, not a file"
            )
        source = replace(source, spec=source.spec.with_model(args.model))
    reranking = args.rerank > 0 and args.candidate == "best"
    record = None if reranking else choose_candidate(source, args.candidate, args.max_drop)
    progress = stderr_progress(not args.json)
    subject, eval_config = prepare(source, progress)
    recovery = recovery_preset(args.recovery)
    trace: list[dict[str, float]] = []
    baseline = None
    if record is None:
        record, trace, baseline = rerank(
            source, subject, eval_config, recovery, args.rerank, args.max_drop, progress
        )
        if FORMATS[args.format] != eval_config.runtime:
            baseline = None  # measured on another runtime than the format's
    exported = export(
        source,
        record,
        subject,
        eval_config,
        args.format,
        args.out,
        recovery,
        trace=trace,
        baseline=baseline,
        progress=progress,
    )
    model = None
    if exported.format == "torch":
        from runners.export import load_torch_export

        model = load_torch_export(exported.out, subject)
    logged: dict[str, str] = {}
    if not args.no_mlflow:
        from agent.tracking import default_tracking_uri, log_export

        logged = log_export(
            exported,
            tracking_uri=source.tracking_uri or default_tracking_uri(Path.cwd()),
            parent_run_id=source.parent_run_id,
            register=args.register,
            example_input=subject.workload.example_input,
            torch_model=model,
        )
    summary = {
        **exported.summary(),
        "candidate": record.index,
        "search_speedup": record.speedup,
        "search_accuracy": record.accuracy,
        "out": str(exported.out),
        **logged,
    }
    if args.json:
        print_json(summary)
        return 0
    con = console()
    con.print((exported.out / exported.files["report"]).read_text())
    con.print(f"[dim]written: {', '.join(sorted(exported.files.values()))} in {exported.out}")
    if logged:
        con.print(f"MLflow run {logged['run_id']}, model {logged['model_uri']}")
        if "model_version" in logged:
            con.print(f"registered as {args.register} version {logged['model_version']}")
    return 0
