"""Pick a candidate of a finished (or interrupted) search and ship it (``layerpilot export``).

The source is a search directory or an MLflow run id (a search's parent run, or one candidate
run). The candidate is rebuilt from its strategy, fully recovered, measured against the baseline
on the format's runtime, written by :func:`runners.export.export_candidate`, and logged to MLflow
as a run nested under the search (the command, `agent.cli.export`, does the logging).

The candidate is measured as the search measured it: the `EvalSpec` persisted in its
``search.json`` or its parent run (threads, latency protocol, BatchNorm re-estimation, gates);
an older search that did not persist one gets the spec its saved config implies.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.placement import torch_threads
from agent.records import CandidateRecord
from agent.search_dir import SearchDir

if TYPE_CHECKING:
    from runners.build import Subject
    from runners.evaluate import EvalConfig
    from runners.export import ExportedModel
    from runners.job import EvalSpec
    from runners.recovery import RecoveryConfig
    from runners.result import Measurement

Progress = Callable[[str], None] | None


class SearchSourceError(ValueError):
    """A target that names no layerpilot search (the message says what it is instead)."""


class CandidateChoiceError(ValueError):
    """No candidate of the search fits the request (the message names the candidates and what
    to change)."""


@dataclass(frozen=True)
class SearchSource:
    """A search as export needs it: how it measured, what it found, where it is tracked."""

    label: str
    """The directory or run id the user gave."""
    spec: EvalSpec
    """How the search measured its candidates (workload, seed, threads, latency, build)."""
    records: list[CandidateRecord]
    """Every candidate of the search, in evaluation order."""
    parent_run_id: str | None = None
    """The search's MLflow parent run (the export is nested under it)."""
    tracking_uri: str | None = None
    """Where the search is tracked."""
    default_candidate: int | None = None
    """The candidate a candidate run id points at."""
    search_dir: Path | None = None
    """The search directory, when the source is one."""


def load_source(target: str, tracking_uri: str | None = None) -> SearchSource:
    """The search at ``target``: a search directory, or an MLflow run id in ``tracking_uri``.

    Raises:
        agent.search_dir.SearchDirError: ``target`` is a directory but not a readable search
            directory.
        SearchSourceError: ``target`` is no directory and no search or candidate run id.
    """
    sdir = SearchDir(target)
    if sdir.exists() or sdir.path.exists():
        state = sdir.read_state()  # raises "not a search directory" for a plain folder
        ids = state.mlflow
        return SearchSource(
            label=str(sdir.path),
            spec=sdir.eval_spec(state),
            records=sdir.records(),
            parent_run_id=state.parent_run_id,
            tracking_uri=tracking_uri or (ids.tracking_uri if ids else None),
            search_dir=sdir.path,
        )
    return _source_from_run(target, tracking_uri)


def _source_from_run(run_id: str, tracking_uri: str | None) -> SearchSource:
    from agent.tracking import (
        PARENT_RUN_TAG,
        default_tracking_uri,
        load_eval_spec,
        load_run,
        load_search_runs,
        records_from_runs,
    )
    from runners.job import EvalSpec

    uri = tracking_uri or default_tracking_uri(Path.cwd())
    try:
        run = load_run(uri, run_id)
    except Exception as exc:  # MLflow raises its own types for an unknown id
        raise SearchSourceError(
            f"{run_id!r} is neither a search directory nor an MLflow run id in {uri}: {exc}"
        ) from None
    default = None
    if run["tags"].get("layerpilot.kind") == "candidate":
        default = int(run["tags"]["layerpilot.index"])
        run = load_run(uri, run["tags"][PARENT_RUN_TAG])
    elif run["tags"].get("layerpilot.kind") != "search":
        raise SearchSourceError(f"MLflow run {run_id} is not a layerpilot search or candidate run")
    saved = load_eval_spec(uri, run["run_id"])
    spec = EvalSpec.from_dict(saved) if saved is not None else spec_from_params(run["params"])
    return SearchSource(
        label=run_id,
        spec=spec,
        records=records_from_runs(load_search_runs(uri, run["run_id"])),
        parent_run_id=run["run_id"],
        tracking_uri=uri,
        default_candidate=default,
    )


def spec_from_params(params: Mapping[str, str]) -> EvalSpec:
    """The `EvalSpec` of a search logged before its spec was saved, from its parent run's
    params: workload or model, seed, threads, batch size, BatchNorm batches and the latency
    protocol (the rest takes the search defaults).

    Raises:
        SearchSourceError: The params do not make a valid search config.
    """
    from agent.config import ConfigError, config_from_dict, eval_spec

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
    try:
        return eval_spec(config_from_dict(config))
    except ConfigError as exc:
        raise SearchSourceError(
            f"the search's MLflow params are not a search config: {exc}"
        ) from None


def _param(text: str) -> Any:
    if text == "None":
        return None
    return int(text) if text.lstrip("-").isdigit() else text


def successful(source: SearchSource) -> list[CandidateRecord]:
    """The search's candidates with a finite accuracy and speedup.

    Raises:
        CandidateChoiceError: There is none.
    """
    ok = [
        r for r in source.records if r.ok and math.isfinite(r.speedup) and math.isfinite(r.accuracy)
    ]
    if not ok:
        raise CandidateChoiceError(
            f"search {source.label} has no successful candidate "
            f"({len(source.records)} evaluated, all failed): nothing to export"
        )
    return ok


def choose_candidate(source: SearchSource, which: str, max_drop: float) -> CandidateRecord:
    """``best``: the fastest candidate within ``max_drop`` points among those measured at the
    search's deployed fidelity (`agent.report.deployed_records`: the confirmed candidates of a
    multi-fidelity search, every candidate of a single-fidelity one); else the candidate index.

    Raises:
        CandidateChoiceError: No successful candidate, none within ``max_drop``, or a bad index.
    """
    ok = successful(source)
    if which == "best" and source.default_candidate is not None:
        which = str(source.default_candidate)
    if which == "best":
        from agent.report import deployed_records

        ok = deployed_records(ok)
        within = [r for r in ok if r.accuracy_drop <= max_drop]
        if not within:
            closest = min(ok, key=lambda r: r.accuracy_drop)
            raise CandidateChoiceError(
                f"no candidate of {source.label} is within {max_drop} points of the baseline "
                f"after {closest.fidelity} recovery (the closest, #{closest.index}, drops "
                f"{closest.accuracy_drop:.2f}); raise "
                f"--max-drop or pick one with --candidate ID"
            )
        return max(within, key=lambda r: r.speedup)
    if not which.isdigit():
        raise CandidateChoiceError(
            f"--candidate must be 'best' or a candidate index, got {which!r}"
        )
    by_index = {r.index: r for r in source.records}
    record = by_index.get(int(which))
    if record is None:
        raise CandidateChoiceError(
            f"search {source.label} has no candidate {which} (indices {min(by_index)}–"
            f"{max(by_index)})"
        )
    if not record.ok:
        raise CandidateChoiceError(
            f"candidate {which} failed in the search: {record.outcome.error}"
        )
    return record


def prepare(source: SearchSource, progress: Progress = None) -> tuple[Subject, EvalConfig]:
    """The search's workload, prepared, and how to measure an export of it: the search's own
    setup (`SearchSource.spec`), always timed (a latency-free search still exports a timing)."""
    from runners.build import Subject

    spec = source.spec
    if progress is not None:
        progress(f"loading {spec.name}")
    with torch_threads(spec.eval.threads):
        subject = Subject.prepare(spec.load_workload())
    return subject, replace(spec.eval, time_latency=True)


def rerank(
    source: SearchSource,
    subject: Subject,
    config: EvalConfig,
    recovery: RecoveryConfig,
    k: int,
    max_drop: float,
    progress: Progress = None,
) -> tuple[CandidateRecord, list[dict[str, float]], Measurement]:
    """The fastest of the search's ``k`` fastest Pareto candidates that is within ``max_drop``
    points *after* ``recovery``.

    The search ranks candidates by what they measured with its own (cheaper) recovery; a
    candidate that lost too much there may come back with full recovery. Candidates are
    rebuilt and measured fastest first, and the first within ``max_drop`` wins (each costs one
    build with recovery and one measurement). Returns it, the trace (index, search speedup,
    recovered accuracy and drop) of every candidate tried, and the baseline measurement.

    Raises:
        CandidateChoiceError: None of the ``k`` is within ``max_drop`` after recovery.
    """
    from agent.report import pareto_front
    from runners.evaluate import measure
    from runners.result import metric_drop
    from search_spaces import Strategy

    ok = successful(source)
    front = [ok[i] for i in pareto_front([(-r.accuracy_drop, r.speedup) for r in ok])]
    chosen = sorted(front, key=lambda r: -r.speedup)[:k]
    recovered = replace(config, build=replace(config.build, recovery=recovery))
    with torch_threads(config.threads):
        reference = measure(subject, Strategy(), config)
    baseline = reference.accuracy
    trace: list[dict[str, float]] = []
    for record in chosen:
        if progress is not None:
            progress(f"re-ranking: candidate {record.index} ({record.speedup:.2f}x in the search)")
        with torch_threads(config.threads):
            accuracy = measure(subject, record.strategy, recovered).accuracy
        trace.append(
            {
                "index": record.index,
                "search_speedup": record.speedup,
                "accuracy": accuracy,
                "drop": metric_drop(baseline, accuracy, subject.workload.higher_is_better),
            }
        )
        if trace[-1]["drop"] <= max_drop:
            return record, trace, reference
    tried = ", ".join(f"#{t['index']:.0f}: {t['drop']:.2f}" for t in trace)
    raise CandidateChoiceError(
        f"none of the {len(chosen)} fastest Pareto candidates of {source.label} is within "
        f"{max_drop} points after {recovery.steps} recovery steps (drops: {tried}); raise "
        "--rerank or --max-drop"
    )


def export(
    source: SearchSource,
    record: CandidateRecord,
    subject: Subject,
    config: EvalConfig,
    fmt: str,
    out: Path,
    recovery: RecoveryConfig,
    trace: list[dict[str, float]] | None = None,
    baseline: Measurement | None = None,
    progress: Progress = None,
) -> ExportedModel:
    """Rebuild ``record`` with ``recovery``, measure it (and ``baseline`` unless given) on
    ``fmt``'s runtime and write it to ``out`` (`runners.export.export_candidate`).

    The rebuild runs torch on the search's ``threads``, as its workers did: the recovery's
    arithmetic then matches theirs, and so does the accuracy (a 2-thread rebuild of a 1-thread
    search's MobileNet candidate came out 0.67 points apart)."""
    from runners.export import export_candidate

    with torch_threads(config.threads):
        return export_candidate(
            subject,
            record.strategy,
            fmt,
            out,
            config=config,
            recovery=recovery,
            baseline=baseline,
            source={
                "search": source.label,
                "candidate": record.index,
                "seed": source.spec.seed,
                **({"parent_run_id": source.parent_run_id} if source.parent_run_id else {}),
                **({"reranked": json.dumps(trace)} if trace else {}),
            },
            progress=progress,
        )
