"""What a search leaves behind: its summary metrics, the front tagged in MLflow, the best
candidate (strategy file and logged model), and the report."""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from typing import Any

from agent.config import SearchConfig, build_config
from agent.records import CandidateRecord
from agent.search_dir import SearchDir, SearchState

logger = logging.getLogger(__name__)


def baseline_summary(measurement: dict[str, Any]) -> dict[str, Any]:
    """The baseline as flat metrics (``measurement_dict`` nests the latency statistics)."""
    latency = measurement.get("latency") or {}
    out: dict[str, Any] = {
        k: measurement[k]
        for k in ("accuracy", "flops", "weighted_flops", "params", "size_bytes")
        if k in measurement
    }
    out["latency_ms"] = latency.get("median_ms")
    out["latency_p90_ms"] = latency.get("p90_ms")
    out["latency_spread"] = latency.get("spread")
    return out


def baseline_accuracy_of(state: SearchState) -> float:
    """The search's baseline accuracy (NaN before the baseline was measured)."""
    return float((state.baseline or {}).get("accuracy", math.nan))


def summarize(
    records: list[CandidateRecord],
    baseline_accuracy: float,
    t: dict[str, float],
    wall: float,
    deployed: str | None = None,
) -> dict[str, Any]:
    """The search's summary metrics (``search.json``, the parent run, the CLI, the benchmark).

    The best speedup and the hypervolume are those of the candidates measured at the
    ``deployed`` fidelity (`deployed_records`); ``summary_fidelity`` names the fidelity they
    were read at, ``records_<level>`` counts the records per fidelity, ``candidates`` the
    distinct strategies and ``eval_<level>_seconds`` the measurement time per fidelity.

    ``overhead_share`` is the share of wall time spent outside candidate and probe measurement:
    start-up, agent and tracking time that did not overlap a measurement, and idle gaps. It is
    the authoritative overhead figure. ``agent_seconds`` (ask, tell, and thinking while nothing
    was in flight) and ``tracking_seconds`` are driver time, much of which overlaps the prefetched
    next measurement; ``agent_overlapped_seconds`` is training done while a measurement ran.
    """
    from agent.report import best_at_drop, deployed_records, search_hypervolume

    ok = [r for r in records if r.ok]
    shown = deployed_records(records, deployed)
    best = best_at_drop(shown, 1.0)
    measured = t.get("eval", 0.0) + t.get("probes", 0.0)
    levels: dict[str, int] = {}
    for r in records:
        levels[r.fidelity] = levels.get(r.fidelity, 0) + 1
    return {
        "candidates": len({r.strategy.key() for r in records}),
        "records": len(records),
        **{f"records_{level}": n for level, n in levels.items()},
        **{
            f"{name}_seconds": seconds
            for name, seconds in t.items()
            if name.startswith("eval_") and name.removeprefix("eval_") in levels
        },
        "summary_fidelity": shown[0].fidelity if shown else deployed,
        "failed": len(records) - len(ok),
        "cached": sum(r.cached for r in records),
        "best_reward": max((r.reward for r in shown), default=math.nan),
        "best_speedup_at_1pt": best.speedup if best else math.nan,
        "hypervolume": search_hypervolume(shown, baseline_accuracy),
        "wall_seconds": wall,
        "eval_seconds": t.get("eval", 0.0),
        "probe_seconds": t.get("probes", 0.0),
        "startup_seconds": t.get("startup", 0.0),
        "agent_seconds": t.get("agent", 0.0) + t.get("agent_setup", 0.0) - t.get("probes", 0.0),
        "agent_overlapped_seconds": t.get("agent_overlapped", 0.0),
        "tracking_seconds": t.get("tracking", 0.0),
        "overhead_share": max(0.0, 1.0 - measured / wall) if wall > 0 else math.nan,
    }


def finish(
    tracker: Any,
    config: SearchConfig,
    subject: Any,
    records: list[CandidateRecord],
    run_ids: dict[int, str],
    summary: dict[str, Any],
    status: str,
    sdir: SearchDir,
    state: SearchState,
) -> None:
    """Tag the front, save and log the best candidate, write the report, close the parent run.

    Adds ``best_index`` to ``summary`` when a candidate succeeded.
    """
    from agent.report import best_at_drop, deployed_records, pareto_front, write_report

    ok = [r for r in deployed_records(records, config.fidelities[-1]) if r.ok]
    front = [ok[i] for i in pareto_front([(-r.accuracy_drop, r.speedup) for r in ok])]
    tracker.mark_pareto([run_ids[r.index] for r in front if r.index in run_ids])
    if ok:
        best = max(ok, key=lambda r: r.reward)
        sdir.write_best_strategy(best.strategy)
        summary["best_index"] = best.index
        if config.log_model and best.index in run_ids:
            _log_best_model(tracker, config, subject, best, run_ids[best.index])
    report = write_report(
        records,
        state.baseline or {},
        sdir.report_dir,
        title=f"layerpilot search {sdir.name}",
        deployed=config.fidelities[-1],
    )
    parent = state.parent_run_id
    assert parent is not None, "finish() runs only for a tracked search"
    tracker.log_artifact(parent, report)
    tracker.log_artifact(parent, report.parent / "pareto.png")
    tracker.log_artifact(parent, report.with_suffix(".html"))  # what the artifact viewer draws
    bound = config.reward.max_drop
    shown = best_at_drop(ok, bound)
    tracker.describe_search(shown, run_ids.get(shown.index) if shown else None, bound)
    tracker.save_view(bound, config.fidelities[-1])
    tracker.finish_search({k: v for k, v in summary.items() if isinstance(v, int | float)}, status)


def _log_best_model(
    tracker: Any, config: SearchConfig, subject: Any, best: CandidateRecord, run_id: str
) -> None:
    """Rebuild the best candidate and log it on its run (`agent.tracking.models`' policy: pt2,
    else the ONNX graph its figures were measured on). A model that cannot be logged costs a
    warning and a tag, never the search's results."""
    from runners.build import build_candidate
    from runners.onnx_export import build_onnx
    from runners.recovery import recovery_preset

    try:
        build = replace(build_config(config), recovery=recovery_preset(best.fidelity))
        candidate = build_candidate(subject, best.strategy, build)
        tracker.log_best_model(
            run_id,
            candidate.model,
            subject.workload.example_input,
            onnx_form=lambda folder: build_onnx(candidate, folder).path,
        )
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        logger.warning("the best model was not logged to MLflow: %s", reason)
        tracker.note_model_not_logged(run_id, reason)
