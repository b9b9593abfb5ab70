"""``layerpilot export``: pick a candidate of a finished (or interrupted) search and ship it.

The source is a search directory or an MLflow run id (a search's parent run, or one candidate
run). The candidate is rebuilt from its strategy, fully recovered, measured against the baseline
on the format's runtime, written by :func:`runners.export.export_candidate`, and logged to MLflow
as a run nested under the search (``--register NAME`` also registers the model).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agent.records import CandidateRecord


@dataclass(frozen=True)
class SearchSource:
    """A search as export needs it: how it measured, what it found, where it is tracked."""

    label: str
    """The directory or run id the user gave."""
    config: dict[str, Any]
    """The search's settings (``workload``/``model``, ``seed``, ``threads``, ``batch_size``,
    ``bn_batches``, ``cache_dir``, ``latency``), as far as the source records them."""
    records: list[CandidateRecord]
    parent_run_id: str | None = None
    tracking_uri: str | None = None
    default_candidate: int | None = None
    """The candidate a candidate run id points at."""
    search_dir: Path | None = field(default=None)


def load_source(target: str, tracking_uri: str | None = None) -> SearchSource:
    """The search at ``target``: a search directory, or an MLflow run id in ``tracking_uri``.

    Raises:
        CliError: ``target`` is neither, or the directory is not a search directory.
    """
    from agent.cli import CliError
    from agent.report import load_records

    path = Path(target)
    if (path / "search.json").is_file():
        state = json.loads((path / "search.json").read_text())
        mlflow_state = state.get("mlflow") or {}
        return SearchSource(
            label=str(path),
            config=dict(state.get("config") or {}),
            records=load_records(path),
            parent_run_id=mlflow_state.get("parent_run_id"),
            tracking_uri=tracking_uri or mlflow_state.get("tracking_uri"),
            search_dir=path,
        )
    if path.exists():
        raise CliError(f"{target} is not a search directory (no search.json in it)")
    return _source_from_run(target, tracking_uri)


def _source_from_run(run_id: str, tracking_uri: str | None) -> SearchSource:
    from agent.cli import CliError
    from agent.report import records_from_runs
    from agent.tracking import PARENT_RUN_TAG, default_tracking_uri, load_run, load_search_runs

    uri = tracking_uri or default_tracking_uri(Path.cwd())
    try:
        run = load_run(uri, run_id)
    except Exception as exc:  # MLflow raises its own types for an unknown id
        raise CliError(
            f"{run_id!r} is neither a search directory nor an MLflow run id in {uri}: {exc}"
        ) from None
    default = None
    if run["tags"].get("layerpilot.kind") == "candidate":
        default = int(run["tags"]["layerpilot.index"])
        run = load_run(uri, run["tags"][PARENT_RUN_TAG])
    elif run["tags"].get("layerpilot.kind") != "search":
        raise CliError(f"MLflow run {run_id} is not a layerpilot search or candidate run")
    params = run["params"]
    config: dict[str, Any] = {
        key: _param(params[key]) for key in ("workload", "model", "seed") if key in params
    }
    for key in ("threads", "batch_size", "bn_batches"):
        if key in params:
            config[key] = int(params[key])
    latency = {
        key.removeprefix("latency."): float(value) if "." in value else int(value)
        for key, value in params.items()
        if key.startswith("latency.") and value.replace(".", "", 1).isdigit()
    }
    if latency:
        config["latency"] = latency  # the search's timing protocol, as its parent run logged it
    return SearchSource(
        label=run_id,
        config=config,
        records=records_from_runs(load_search_runs(uri, run["run_id"])),
        parent_run_id=run["run_id"],
        tracking_uri=uri,
        default_candidate=default,
    )


def _param(text: str) -> Any:
    if text == "None":
        return None
    return int(text) if text.lstrip("-").isdigit() else text


def successful(source: SearchSource) -> list[CandidateRecord]:
    """The search's candidates with a finite accuracy and speedup.

    Raises:
        CliError: There is none.
    """
    from agent.cli import CliError

    ok = [
        r for r in source.records if r.ok and math.isfinite(r.speedup) and math.isfinite(r.accuracy)
    ]
    if not ok:
        raise CliError(
            f"search {source.label} has no successful candidate "
            f"({len(source.records)} evaluated, all failed): nothing to export"
        )
    return ok


def choose_candidate(source: SearchSource, which: str, max_drop: float) -> CandidateRecord:
    """``best``: the fastest candidate within ``max_drop`` points; else the candidate index.

    Raises:
        CliError: No successful candidate, none within ``max_drop``, or a bad index.
    """
    from agent.cli import CliError

    ok = successful(source)
    if which == "best" and source.default_candidate is not None:
        which = str(source.default_candidate)
    if which == "best":
        within = [r for r in ok if r.accuracy_drop <= max_drop]
        if not within:
            closest = min(ok, key=lambda r: r.accuracy_drop)
            raise CliError(
                f"no candidate of {source.label} is within {max_drop} points of the baseline "
                f"(the closest, #{closest.index}, drops {closest.accuracy_drop:.2f}); raise "
                f"--max-drop or pick one with --candidate ID"
            )
        return max(within, key=lambda r: r.speedup)
    if not which.isdigit():
        raise CliError(f"--candidate must be 'best' or a candidate index, got {which!r}")
    by_index = {r.index: r for r in source.records}
    record = by_index.get(int(which))
    if record is None:
        raise CliError(
            f"search {source.label} has no candidate {which} (indices {min(by_index)}–"
            f"{max(by_index)})"
        )
    if not record.ok:
        raise CliError(f"candidate {which} failed in the search: {record.outcome.error}")
    return record


def add_command(sub: Any) -> None:
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
    p.add_argument("--json", action="store_true", help="print export.json's summary only")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from agent.cli import CliError, _console, _print_json, _stderr_progress
    from runners.export import FORMATS, check_format
    from runners.recovery import recovery_preset

    if args.register and args.no_mlflow:
        raise CliError("--register needs MLflow; drop --no-mlflow")
    if args.rerank < 0:
        raise CliError(f"--rerank must be >= 0, got {args.rerank}")
    check_format(args.format)  # no GPU / no TensorRT: fail before loading anything
    source = load_source(args.target, args.tracking_uri)
    reranking = args.rerank > 0 and args.candidate == "best"
    record = None if reranking else choose_candidate(source, args.candidate, args.max_drop)
    progress = _stderr_progress(not args.json)
    subject, eval_config = _prepare(source, progress)
    recovery = recovery_preset(args.recovery)
    trace: list[dict[str, float]] = []
    baseline = None
    if record is None:
        record, trace, baseline = rerank(
            source, subject, eval_config, recovery, args.rerank, args.max_drop, progress
        )
        if FORMATS[args.format] != eval_config.runtime:
            baseline = None  # measured on another runtime than the format's
    exported = _export(source, record, subject, eval_config, args, trace, baseline, progress)
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
        _print_json(summary)
        return 0
    con = _console()
    con.print((exported.out / exported.files["report"]).read_text())
    con.print(f"[dim]written: {', '.join(sorted(exported.files.values()))} in {exported.out}")
    if logged:
        con.print(f"MLflow run {logged['run_id']}, model {logged['model_uri']}")
        if "model_version" in logged:
            con.print(f"registered as {args.register} version {logged['model_version']}")
    return 0


def rerank(
    source: SearchSource,
    subject: Any,
    config: Any,
    recovery: Any,
    k: int,
    max_drop: float,
    progress: Any = None,
) -> tuple[CandidateRecord, list[dict[str, float]], Any]:
    """The fastest of the search's ``k`` fastest Pareto candidates that is within ``max_drop``
    points *after* ``recovery``.

    The search ranks candidates by what they measured with its own (cheaper) recovery; a
    candidate that lost too much there may come back with full recovery. Candidates are
    rebuilt and measured fastest first, and the first within ``max_drop`` wins (each costs one
    build with recovery and one measurement). Returns it, the trace (index, search speedup,
    recovered accuracy and drop) of every candidate tried, and the baseline measurement.

    Raises:
        CliError: None of the ``k`` is within ``max_drop`` after recovery.
    """
    from dataclasses import replace as _replace

    from agent.cli import CliError
    from agent.report import pareto_front
    from runners.evaluate import measure
    from search_spaces import Strategy

    ok = successful(source)
    front = [ok[i] for i in pareto_front([(r.accuracy, r.speedup) for r in ok])]
    chosen = sorted(front, key=lambda r: -r.speedup)[:k]
    build_config = _replace(config, build=_replace(config.build, recovery=recovery))
    reference = measure(subject, Strategy(), config)
    baseline = reference.accuracy
    trace: list[dict[str, float]] = []
    for record in chosen:
        if progress is not None:
            progress(f"re-ranking: candidate {record.index} ({record.speedup:.2f}x in the search)")
        accuracy = measure(subject, record.strategy, build_config).accuracy
        trace.append(
            {
                "index": record.index,
                "search_speedup": record.speedup,
                "accuracy": accuracy,
                "drop": baseline - accuracy,
            }
        )
        if baseline - accuracy <= max_drop:
            return record, trace, reference
    tried = ", ".join(f"#{t['index']:.0f}: {t['drop']:.2f}" for t in trace)
    raise CliError(
        f"none of the {len(chosen)} fastest Pareto candidates of {source.label} is within "
        f"{max_drop} points after {recovery.steps} recovery steps (drops: {tried}); raise "
        "--rerank or --max-drop"
    )


def _prepare(source: SearchSource, progress: Any) -> tuple[Any, Any]:
    """The search's workload, prepared, and how it measured (threads, latency, BatchNorm)."""
    from runners.build import BuildConfig, Subject
    from runners.evaluate import EvalConfig
    from runners.job import EvalSpec
    from runners.latency import LatencyConfig

    config = source.config
    latency = LatencyConfig(**config["latency"]) if config.get("latency") else LatencyConfig()
    cache_dir = config.get("cache_dir")
    spec = EvalSpec(
        workload=config.get("workload") if not config.get("model") else None,
        model=config.get("model") or None,
        seed=int(config.get("seed") or 0),
        cache_dir=Path(cache_dir) if cache_dir else None,
    )
    if progress is not None:
        progress(f"loading {spec.name}")
    subject = Subject.prepare(spec.load_workload())
    eval_config = EvalConfig(
        threads=int(config.get("threads") or 1),
        latency=replace(latency, batch_size=int(config.get("batch_size") or 1)),
        build=BuildConfig(bn_batches=int(config.get("bn_batches", 8))),
    )
    return subject, eval_config


def _export(
    source: SearchSource,
    record: CandidateRecord,
    subject: Any,
    eval_config: Any,
    args: argparse.Namespace,
    trace: list[dict[str, float]],
    baseline: Any,
    progress: Any,
) -> Any:
    from runners.export import export_candidate
    from runners.recovery import recovery_preset

    return export_candidate(
        subject,
        record.strategy,
        args.format,
        args.out,
        config=eval_config,
        recovery=recovery_preset(args.recovery),
        baseline=baseline,
        source={
            "search": source.label,
            "candidate": record.index,
            "seed": int(source.config.get("seed") or 0),
            **({"parent_run_id": source.parent_run_id} if source.parent_run_id else {}),
            **({"reranked": json.dumps(trace)} if trace else {}),
        },
        progress=progress,
    )
