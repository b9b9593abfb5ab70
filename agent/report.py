"""What a search found: the accuracy/speedup Pareto front, its hypervolume, a plot and a table.

Both objectives are maximised: accuracy (percent) and *measured* speedup over the baseline.
A report is rebuilt either from a search directory (:func:`load_records`, i.e.
:class:`agent.search_dir.SearchDir`) or from MLflow alone
(:func:`agent.tracking.records_from_runs` over the runs of :func:`agent.tracking.load_search`,
re-exported here).

The hypervolume reference point is fixed so that searches, benchmarks and reports agree:
accuracy ``baseline_accuracy - HV_ACCURACY_MARGIN`` (10 points) and speedup
``HV_REF_SPEEDUP`` (1.0x). A candidate that is slower than the baseline or loses more than 10
points adds nothing. The unit is accuracy points x speedup.

Long module: the front, the hypervolume, the fidelity selection, the markdown/HTML report and
its plot belong together (the report reads all of them).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from agent.records import CandidateRecord
from agent.search_dir import SearchDir
from agent.tracking.readers import records_from_runs
from search_spaces import Strategy

HV_ACCURACY_MARGIN = 10.0
"""Hypervolume reference: this many accuracy points below the baseline."""
HV_REF_SPEEDUP = 1.0
"""Hypervolume reference: the baseline's speed."""
DROP_BUDGET = 1.0
"""The headline accuracy budget (points) of :func:`best_at_drop` and the report."""


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated ``(accuracy, speedup)`` points, both maximised.

    A point is dominated when another is at least as good on both and better on one. Of exact
    duplicates only the first is kept; points with a NaN coordinate are never on the front.
    The indices come back in ascending order.

    Example:
        >>> pareto_front([(90.0, 1.0), (85.0, 2.0), (84.0, 1.5), (90.0, 1.0)])
        [0, 1]
    """
    order = sorted(
        (i for i, (acc, speed) in enumerate(points) if not (math.isnan(acc) or math.isnan(speed))),
        key=lambda i: (-points[i][0], -points[i][1], i),
    )
    front = []
    best_speedup = -math.inf
    for i in order:  # by accuracy, best first: a point survives if it is faster than all before
        if points[i][1] > best_speedup:
            front.append(i)
            best_speedup = points[i][1]
    return sorted(front)


def hypervolume(
    points: Iterable[tuple[float, float]],
    ref_accuracy: float,
    ref_speedup: float = HV_REF_SPEEDUP,
) -> float:
    """Area of the ``(accuracy, speedup)`` region dominated by ``points`` above the reference.

    Points at or below the reference in either coordinate contribute nothing.

    Example:
        >>> hypervolume([(90.0, 2.0), (80.0, 3.0)], ref_accuracy=70.0)  # 20*1 + 10*1
        30.0
    """
    above = [(a, s) for a, s in points if a > ref_accuracy and s > ref_speedup]
    front = [above[i] for i in pareto_front(above)]
    volume = 0.0
    previous = ref_speedup
    for accuracy, speedup in sorted(front, key=lambda p: p[1]):  # speedup up, accuracy down
        volume += (accuracy - ref_accuracy) * (speedup - previous)
        previous = speedup
    return volume


def search_hypervolume(records: Iterable[CandidateRecord], baseline_accuracy: float) -> float:
    """The search's hypervolume with the fixed reference (baseline - 10 points, 1.0x), on
    each record's drop (so a metric where lower is better counts the same way)."""
    del baseline_accuracy  # the drop is already relative to it
    return hypervolume(_points(_ok(records)), -HV_ACCURACY_MARGIN, HV_REF_SPEEDUP)


def pareto_records(records: Iterable[CandidateRecord]) -> list[CandidateRecord]:
    """The ok candidates on the accuracy/speedup front, in evaluation order."""
    ok = _ok(records)
    return [ok[i] for i in pareto_front(_points(ok))]


def fidelity_rank(fidelity: str) -> int:
    """Recovery steps of a fidelity name (``none`` 0, ``short`` 40, ``full`` 400, ``"7 steps"``
    7); -1 for a name that is neither."""
    from runners.recovery import RECOVERY_PRESETS

    if fidelity in RECOVERY_PRESETS:
        return RECOVERY_PRESETS[fidelity].steps
    head = fidelity.split(" ", 1)[0]
    return int(head) if head.isdigit() else -1


def deployed_records(
    records: Iterable[CandidateRecord], deployed: str | None = None
) -> list[CandidateRecord]:
    """The records the search's figures are read from: those measured at the ``deployed``
    fidelity (the schedule's last) when one succeeded there, else those of the highest fidelity
    any record succeeded at (a search stopped before its first deployed measurement)."""
    records = list(records)
    levels = {r.fidelity for r in _ok(records)}
    if not levels:
        return records
    level = deployed if deployed in levels else max(levels, key=fidelity_rank)
    return [r for r in records if r.fidelity == level]


def best_at_drop(
    records: Iterable[CandidateRecord], max_drop: float = DROP_BUDGET
) -> CandidateRecord | None:
    """The ok candidate with the highest measured speedup losing at most ``max_drop`` points.

    Ties go to the earliest candidate; ``None`` when no candidate fits the budget.
    """
    fitting = [r for r in _ok(records) if r.accuracy_drop <= max_drop]
    return max(fitting, key=lambda r: r.speedup, default=None)


def compact_strategy(strategy: Strategy) -> str:
    """A one-line form for tables: ``*: precision=int8; layer1.0: skip``.

    Example:
        >>> compact_strategy(Strategy.from_dict({"conv1": {"prune": 0.5}, "l1": {"skip": True}}))
        'conv1: prune=0.5; l1: skip'
    """
    parts = []
    for unit, actions in strategy.units.items():
        if actions:
            text = ", ".join(
                name if value is True else f"{name}={value}" for name, value in actions.items()
            )
            parts.append(f"{unit}: {text}")
    return "; ".join(parts) or "(unchanged)"


def write_report(
    records: Sequence[CandidateRecord],
    baseline: Mapping[str, Any],
    out_dir: Path,
    title: str,
    deployed: str | None = None,
) -> Path:
    """Write ``pareto.png`` and ``report.md`` into ``out_dir``; return the markdown's path.

    Every figure is read at one fidelity, named in the report: the ``deployed`` one (the
    search's last, what export ships) or, when no record succeeded there, the highest any
    record reached (`deployed_records`). Records at cheaper fidelities are counted and drawn
    in grey; their accuracy is not the deployed model's.

    Args:
        records: Every candidate of the search (failed ones are counted, not plotted).
        baseline: The unchanged model's measurement: ``accuracy`` (or ``baseline_accuracy``)
            is required; ``latency_ms`` and ``flops`` are shown when present.
        out_dir: Created if missing.
        title: The report's heading and the plot's title.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base_accuracy = _baseline_value(baseline, "accuracy")
    if math.isnan(base_accuracy):
        raise ValueError("baseline needs an 'accuracy' (percent) to draw the report against")
    shown = deployed_records(records, deployed)
    ok = _ok(shown)
    cheaper = [r for r in _ok(records) if r not in shown]
    level = ok[0].fidelity if ok else (deployed or "none")
    front = pareto_records(ok)
    best = best_at_drop(ok)
    _plot(ok, front, best, base_accuracy, out_dir / "pareto.png", title, level, cheaper)

    cached = sum(r.cached for r in records)
    failed = sum(not r.ok for r in records)
    base_latency = _baseline_value(baseline, "latency_ms")
    base_flops = _baseline_value(baseline, "flops")
    hv = search_hypervolume(ok, base_accuracy)
    best_text = "none within the budget"
    if best is not None:
        best_text = (
            f"**{best.speedup:.2f}x** (#{best.index}, accuracy {best.accuracy:.2f}%, "
            f"drop {best.accuracy_drop:.2f} pt)"
        )
    lines = [
        f"# {title}",
        "",
        "| | |",
        "|---|---|",
        f"| candidates | {len({r.strategy.key() for r in records})} strategies, "
        f"{len(records)} measurements ({cached} cached) |",
        f"| fidelity | every figure below is measured after **{level}** recovery "
        f"({len(ok)} candidates){_cheaper_note(cheaper, level)} |",
        f"| failed | {failed} |",
        *_doubt_rows(ok),
        f"| baseline | accuracy {base_accuracy:.2f}%, latency {_num(base_latency, 3)} ms, "
        f"FLOPs {_si(base_flops)} |",
        f"| hypervolume | {hv:.3f} (reference: accuracy {base_accuracy - HV_ACCURACY_MARGIN:.2f}%"
        f", speedup {HV_REF_SPEEDUP:.1f}x) |",
        f"| best speedup at <= {DROP_BUDGET:g} pt drop | {best_text} |",
        "",
        "![accuracy vs measured speedup](pareto.png)",
        "",
        f"## Pareto front ({len(front)} of {len(ok)} successful candidates at {level})",
        "",
    ]
    if front:
        lines += [
            "| # | fidelity | accuracy % | drop (pt) | latency ms | speedup | FLOPs | source "
            "| strategy |",
            "|---:|---|---:|---:|---:|---:|---:|---|---|",
        ]
        for r in sorted(front, key=lambda r: (r.speedup, r.index)):
            result = r.result
            assert result is not None  # the front holds successful candidates only
            lines.append(
                f"| {r.index} | {r.fidelity} | {r.accuracy:.2f} | {r.accuracy_drop:.2f} "
                f"| {_num(result.latency_ms, 3)} | {r.speedup:.2f} "
                f"| {_si(result.flops)} | {r.source} "
                f"| {_cell(compact_strategy(r.strategy))} |"
            )
    else:
        lines.append("No candidate was measured successfully.")
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    write_html(path, out_dir / "pareto.png", title)
    return path


def write_html(markdown: Path, plot: Path, title: str) -> Path:
    """``report.html`` beside ``markdown``: the plot inline (a data URI) above the report's
    text, so MLflow's artifact viewer, which renders HTML but not markdown images, shows both."""
    import base64
    import html

    image = base64.b64encode(plot.read_bytes()).decode() if plot.exists() else ""
    head = f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>"
    img = f"<img alt='Pareto plot' src='data:image/png;base64,{image}'>" if image else ""
    text = f"<pre style='white-space:pre-wrap'>{html.escape(markdown.read_text())}</pre>"
    out = markdown.with_suffix(".html")
    out.write_text(f"{head}<body style='font-family:sans-serif'>{img}{text}</body>\n")
    return out


def _doubt_rows(ok: Sequence[CandidateRecord]) -> list[str]:
    """A row naming the candidates whose speedup is in doubt (`EvalResult.latency_doubts`)."""
    doubtful = [r for r in ok if r.result is not None and r.result.latency_doubts]
    if not doubtful:
        return []
    named = ", ".join(f"#{r.index}" for r in doubtful[:8]) + (" …" if len(doubtful) > 8 else "")
    first = doubtful[0].result
    assert first is not None
    return [f"| latency in doubt | {len(doubtful)} ({named}); e.g. {first.latency_doubts[0]} |"]


def _cheaper_note(cheaper: Sequence[CandidateRecord], level: str) -> str:
    if not cheaper:
        return ""
    counts: dict[str, int] = {}
    for r in cheaper:
        counts[r.fidelity] = counts.get(r.fidelity, 0) + 1
    parts = ", ".join(f"{n} at {name}" for name, n in sorted(counts.items()))
    return (
        f"; {len(cheaper)} cheaper measurements ({parts}) only ranked candidates for promotion "
        f"to {level} and are drawn in grey"
    )


def load_records(search_dir: Path) -> list[CandidateRecord]:
    """The candidates of a search directory (`agent.search_dir.SearchDir.records`)."""
    return SearchDir(search_dir).records()


def _ok(records: Iterable[CandidateRecord]) -> list[CandidateRecord]:
    return [r for r in records if r.ok and math.isfinite(r.accuracy) and math.isfinite(r.speedup)]


def _points(records: Sequence[CandidateRecord]) -> list[tuple[float, float]]:
    """``(-drop, speedup)``: larger is better in both, whichever way the metric points."""
    return [(-r.accuracy_drop, r.speedup) for r in records]


def _baseline_value(baseline: Mapping[str, Any], name: str) -> float:
    value = baseline.get(name, baseline.get(f"baseline_{name}"))
    return float(value) if isinstance(value, int | float) else math.nan


def _plot(
    ok: Sequence[CandidateRecord],
    front: Sequence[CandidateRecord],
    best: CandidateRecord | None,
    base_accuracy: float,
    path: Path,
    title: str,
    level: str,
    cheaper: Sequence[CandidateRecord] = (),
) -> None:
    # The object API, not pyplot: no global backend or figure state, Agg only.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 5.0), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if cheaper:
        ax.scatter(
            [r.speedup for r in cheaper],
            [r.accuracy for r in cheaper],
            s=10,
            alpha=0.35,
            color="lightgrey",
            label=f"cheaper fidelities ({len(cheaper)})",
        )
    for n, source in enumerate(sorted({r.source for r in ok})):
        mine = [r for r in ok if r.source == source]
        ax.scatter(
            [r.speedup for r in mine],
            [r.accuracy for r in mine],
            s=18,
            alpha=0.6,
            color=f"C{n % 10}",
            label=f"{source} ({len(mine)})",
        )
    if front:
        line = sorted(front, key=lambda r: r.speedup)
        # y is the best accuracy reachable at >= x speedup: constant on (x[i-1], x[i]].
        ax.step(
            [r.speedup for r in line],
            [r.accuracy for r in line],
            where="pre",
            color="black",
            linewidth=1.2,
            label=f"Pareto front ({len(front)})",
        )
    ax.scatter(
        [1.0],
        [base_accuracy],
        marker="*",
        s=180,
        color="gold",
        edgecolor="black",
        zorder=5,
        label="baseline",
    )
    ax.axhline(
        base_accuracy - DROP_BUDGET,
        color="grey",
        linestyle="--",
        linewidth=1,
        label=f"-{DROP_BUDGET:g} pt",
    )
    if best is not None:
        ax.annotate(
            f"#{best.index}: {best.speedup:.2f}x",
            (best.speedup, best.accuracy),
            xytext=(6, 6),
            textcoords="offset points",
            fontsize=8,
        )
    ax.set_xlabel("measured speedup over baseline (x)")
    ax.set_ylabel(f"accuracy after {level} recovery (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.savefig(path)


def _num(value: float, digits: int) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}g}"


def _si(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{suffix}"
    return f"{value:.3g}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


__all__ = [
    "DROP_BUDGET",
    "HV_ACCURACY_MARGIN",
    "HV_REF_SPEEDUP",
    "best_at_drop",
    "compact_strategy",
    "deployed_records",
    "fidelity_rank",
    "hypervolume",
    "load_records",
    "pareto_front",
    "pareto_records",
    "records_from_runs",
    "search_hypervolume",
    "write_report",
]
