"""Pareto front, hypervolume and the written report, on hand-computed candidates."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from agent.records import CandidateRecord
from agent.report import (
    best_at_drop,
    compact_strategy,
    hypervolume,
    load_records,
    pareto_front,
    pareto_records,
    records_from_runs,
    search_hypervolume,
    write_report,
)
from runners.job import Outcome
from search_spaces import Strategy

BASELINE = {"accuracy": 95.0, "latency_ms": 2.0, "flops": 4.0e6}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def record(
    index: int,
    accuracy: float,
    speedup: float,
    source: str = "ppo",
    failed: bool = False,
) -> CandidateRecord:
    strategy = Strategy({f"layer{index}": {"prune": 0.25}})
    if failed:
        outcome = Outcome(strategy, "failed", error="RuntimeError: export failed")
        return CandidateRecord(index, outcome, reward=-1.0, source=source)
    result = {
        "accuracy": accuracy,
        "baseline_accuracy": BASELINE["accuracy"],
        "accuracy_drop": BASELINE["accuracy"] - accuracy,
        "latency_ms": BASELINE["latency_ms"] / speedup,
        "speedup": speedup,
        "flops": BASELINE["flops"] / speedup,
    }
    outcome = Outcome(strategy, "ok", result=result, eval_seconds=1.0)
    return CandidateRecord(index, outcome, reward=0.5, source=source)


def front_table_indices(markdown: str) -> list[int]:
    table = markdown.split("## Pareto front", 1)[1]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    return [int(row.split("|")[1]) for row in rows[1:]]  # rows[0] is the header


def test_pareto_front_drops_dominated_and_duplicate_points():
    points = [
        (90.0, 1.0),
        (85.0, 2.0),
        (84.0, 1.5),  # dominated by (85, 2)
        (85.0, 2.0),  # duplicate of 1: only the first is kept
        (80.0, 3.0),
        (80.0, 2.5),  # same accuracy, slower
        (math.nan, 9.0),
    ]

    front = pareto_front(points)

    assert front == [0, 1, 4]


def test_pareto_front_is_empty_when_no_points():
    assert pareto_front([]) == []


def test_hypervolume_counts_union_once_when_points_overlap():
    # A(90, 2) covers 20 x 1; B(80, 3) adds 10 x 1 above A's speedup; C is dominated by A.
    points = [(90.0, 2.0), (80.0, 3.0), (75.0, 1.5), (90.0, 2.0)]

    assert hypervolume(points, ref_accuracy=70.0, ref_speedup=1.0) == pytest.approx(30.0)


def test_hypervolume_ignores_points_below_reference():
    below = [(60.0, 5.0), (95.0, 0.9), (70.0, 4.0), (99.0, 1.0)]

    assert hypervolume(below, ref_accuracy=70.0) == 0.0
    assert hypervolume([*below, (72.0, 2.0)], ref_accuracy=70.0) == pytest.approx(2.0)


def test_search_hypervolume_uses_baseline_minus_ten_points_and_unit_speedup():
    records = [
        record(0, accuracy=94.0, speedup=2.0),  # (94 - 85) x (2 - 1) = 9
        record(1, accuracy=84.0, speedup=10.0),  # more than 10 points lost: nothing
        record(2, accuracy=0.0, speedup=0.0, failed=True),
    ]

    assert search_hypervolume(records, baseline_accuracy=95.0) == pytest.approx(9.0)


def test_best_at_drop_picks_fastest_within_budget_inclusive():
    records = [
        record(0, accuracy=94.5, speedup=2.0),
        record(1, accuracy=94.0, speedup=2.5),  # drop exactly 1.0
        record(2, accuracy=93.5, speedup=4.0),  # drop 1.5: over budget
        record(3, accuracy=0.0, speedup=0.0, failed=True),
    ]

    best = best_at_drop(records, max_drop=1.0)

    assert best is not None and best.index == 1


def test_best_at_drop_is_none_when_nothing_fits():
    assert best_at_drop([record(0, accuracy=90.0, speedup=3.0)], max_drop=1.0) is None


def test_pareto_records_skip_failed_candidates():
    records = [record(0, 0.0, 0.0, failed=True), record(1, 94.0, 1.5), record(2, 93.0, 1.2)]

    assert [r.index for r in pareto_records(records)] == [1]


def test_write_report_writes_png_and_table_of_exactly_the_front(tmp_path: Path):
    records = [
        record(0, accuracy=95.0, speedup=1.0, source="random"),
        record(1, accuracy=94.5, speedup=2.0),
        record(2, accuracy=94.0, speedup=1.8),  # dominated by 1
        record(3, accuracy=90.0, speedup=3.5, source="random"),
        record(4, accuracy=0.0, speedup=0.0, failed=True),
        record(5, accuracy=92.0, speedup=3.0),  # front
    ]

    path = write_report(records, BASELINE, tmp_path / "out", title="digits-resnet / ppo")

    png = (tmp_path / "out" / "pareto.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE) and len(png) > 10_000
    markdown = path.read_text()
    assert path == tmp_path / "out" / "report.md"
    assert front_table_indices(markdown) == [0, 1, 5, 3]  # ascending speedup
    assert "| failed | 1 |" in markdown
    assert "**2.00x** (#1" in markdown  # best at <= 1 pt drop
    expected_hv = search_hypervolume(records, BASELINE["accuracy"])
    assert f"| hypervolume | {expected_hv:.3f} " in markdown


def test_write_report_says_so_when_every_candidate_failed(tmp_path: Path):
    records = [record(0, 0.0, 0.0, failed=True)]

    markdown = write_report(records, BASELINE, tmp_path, title="all failed").read_text()

    assert "No candidate was measured successfully." in markdown
    assert "none within the budget" in markdown
    assert (tmp_path / "pareto.png").read_bytes().startswith(PNG_SIGNATURE)


def test_write_report_raises_when_baseline_has_no_accuracy(tmp_path: Path):
    with pytest.raises(ValueError, match="accuracy"):
        write_report([record(0, 94.0, 2.0)], {"latency_ms": 1.0}, tmp_path, title="x")


def test_load_records_ignores_truncated_last_line(tmp_path: Path):
    records = [record(0, 94.0, 2.0), record(1, 0.0, 0.0, failed=True)]
    lines = [json.dumps(r.to_dict()) for r in records]
    truncated = json.dumps(record(2, 93.0, 3.0).to_dict())[:57]
    (tmp_path / "candidates.jsonl").write_text("\n".join([*lines, truncated]))

    loaded = load_records(tmp_path)

    assert loaded == records


def test_load_records_skips_a_corrupt_middle_line_naming_it(tmp_path: Path):
    from agent.search_dir import DamagedRecordWarning

    first, last = (json.dumps(record(i, 94.0, 2.0).to_dict()) for i in (0, 1))
    (tmp_path / "candidates.jsonl").write_text(f"{first}\n{{not json\n{last}\n")

    with pytest.warns(DamagedRecordWarning, match=r"candidates\.jsonl:2"):
        records = load_records(tmp_path)

    assert [r.index for r in records] == [0, 1]


def test_records_from_runs_rebuilds_strategy_from_params_when_artifact_missing():
    runs = [
        {
            "run_id": "b",
            "run_name": "cand-0001",
            "status": "FAILED",
            "params": {"source": "tpe", "cached": "False"},
            "metrics": {"reward": -1.0},
            "tags": {"layerpilot.index": "1", "error": "ValueError: NaN logits"},
            "strategy": None,
        },
        {
            "run_id": "a",
            "run_name": "cand-0000",
            "status": "FINISHED",
            "params": {
                "source": "ppo",
                "cached": "True",
                "extra:lam": "0.5",
                "_default.precision": "int8",
                "layer1.0.skip": "True",
                "conv1.prune": "0.5",
                "fc.rank": "8",
            },
            "metrics": {"accuracy": 94.0, "accuracy_drop": 1.0, "speedup": 2.0, "reward": 0.3},
            "tags": {"layerpilot.index": "0"},
            "strategy": None,
        },
    ]

    ok, failed = records_from_runs(runs)

    assert ok.index == 0 and ok.ok and ok.cached and ok.source == "ppo"
    assert ok.strategy == Strategy(
        {
            "*": {"precision": "int8"},
            "layer1.0": {"skip": True},
            "conv1": {"prune": 0.5},
            "fc": {"rank": 8},
        }
    )
    assert (ok.accuracy, ok.speedup, ok.reward) == (94.0, 2.0, 0.3)
    assert failed.index == 1 and not failed.ok
    assert failed.outcome.error == "ValueError: NaN logits"


def test_compact_strategy_lists_units_and_marks_identity():
    strategy = Strategy({"*": {"precision": "int8"}, "layer1.0": {"skip": True}})

    assert compact_strategy(strategy) == "*: precision=int8; layer1.0: skip"
    assert compact_strategy(Strategy({})) == "(unchanged)"


def test_write_report_names_the_candidates_whose_speedup_is_in_doubt(tmp_path: Path):
    """Issue 18 (B.8): a speedup above the FLOP-ideal (a baseline timed under a load spike) is
    flagged in the report, not passed off as a result."""
    plain = record(1, 94.0, 2.0)
    spiked = record(2, 94.5, 5.0)
    assert spiked.outcome.result is not None
    data = {**spiked.outcome.result.to_dict(), "ideal_speedup": 2.0, "realization": 2.5,
            "speedup_source": "latency", "latency_runs": 100}  # fmt: skip
    spiked = CandidateRecord(2, Outcome(spiked.strategy, "ok", result=data), 0.5, "ppo")

    text = write_report([plain, spiked], BASELINE, tmp_path, "t").read_text()

    row = next(line for line in text.splitlines() if line.startswith("| latency in doubt"))
    assert "| 1 (#2);" in row and "5.00x is 2.50x the FLOP-ideal 2.00x" in row
    clean = write_report([plain], BASELINE, tmp_path / "clean", "t").read_text()
    assert "latency in doubt" not in clean
