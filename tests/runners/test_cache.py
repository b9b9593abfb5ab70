"""The candidate cache: round trip, scope isolation, crash tolerance, pre-issue-15 files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from runners.build import BuildConfig
from runners.cache import CandidateCache
from runners.evaluate import EvalConfig
from runners.job import EvalSpec, Outcome
from runners.result import EvalResult
from search_spaces import Strategy

FIXTURES = Path(__file__).parents[1] / "fixtures" / "pre15"

SCOPE = {"workload": "digits-resnet", "seed": 0, "runtime": "onnxruntime-cpu", "threads": 1}


def _ok(unit: str, speedup: float = 1.5) -> Outcome:
    strategy = Strategy.from_dict({unit: {"skip": True}})
    result = {"speedup": speedup, "accuracy": 97.5, "strategy_key": strategy.key()}
    return Outcome(strategy, "ok", result=result, eval_seconds=2.0, worker="host:1")


def test_put_then_reopen_returns_the_same_outcomes(tmp_path):
    path = tmp_path / "runs" / "candidates.jsonl"
    outcomes = [_ok("layer1.0"), _ok("layer1.1", speedup=1.2)]
    cache = CandidateCache(path, SCOPE)

    for outcome in outcomes:
        cache.put(outcome)
    reopened = CandidateCache(path, dict(reversed(SCOPE.items())))  # key order is irrelevant

    assert len(reopened) == 2
    assert reopened.outcomes() == outcomes
    assert reopened.get(outcomes[1].strategy) == outcomes[1]
    assert outcomes[0].strategy in reopened
    assert Strategy.from_dict({"layer2.0": {"skip": True}}) not in reopened
    assert reopened.get(Strategy()) is None


def test_outcome_of_another_scope_is_invisible(tmp_path):
    path = tmp_path / "candidates.jsonl"
    outcome = _ok("layer1.0")
    CandidateCache(path, SCOPE).put(outcome)

    other = CandidateCache(path, {**SCOPE, "runtime": "torch-cpu"})

    assert len(other) == 0
    assert other.get(outcome.strategy) is None
    assert CandidateCache(path, SCOPE).get(outcome.strategy) == outcome


def test_failed_outcome_is_cached(tmp_path):
    path = tmp_path / "candidates.jsonl"
    strategy = Strategy.from_dict({"layer1.0": {"skip": True}})
    failed = Outcome(strategy, "failed", error="TimeoutError: evaluation exceeded 300 s")

    CandidateCache(path, SCOPE).put(failed)
    cached = CandidateCache(path, SCOPE).get(strategy)

    assert cached is not None
    assert not cached.ok
    assert cached.error == failed.error


def test_truncated_last_line_is_skipped_with_a_warning_and_next_put_is_readable(tmp_path):
    path = tmp_path / "candidates.jsonl"
    first, second, third = _ok("layer1.0"), _ok("layer1.1"), _ok("layer1.2")
    cache = CandidateCache(path, SCOPE)
    cache.put(first)
    cache.put(second)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])  # a crash mid-write of the second line

    with pytest.warns(UserWarning, match=r"candidates\.jsonl:2"):
        reopened = CandidateCache(path, SCOPE)
    reopened.put(third)
    with pytest.warns(UserWarning, match=r"candidates\.jsonl:2"):
        final = CandidateCache(path, SCOPE)

    assert reopened.outcomes() == [first, third]
    assert final.outcomes() == [first, third]
    last = path.read_text().splitlines()[-1]
    assert json.loads(last)["key"] == third.strategy.key()


def test_later_put_of_the_same_strategy_wins(tmp_path):
    path = tmp_path / "candidates.jsonl"
    old, new = _ok("layer1.0", speedup=1.1), _ok("layer1.0", speedup=1.3)
    cache = CandidateCache(path, SCOPE)

    cache.put(old)
    cache.put(new)

    assert len(cache) == 1
    assert CandidateCache(path, SCOPE).get(new.strategy) == new


@pytest.mark.usefixtures("eight_bit_int8")  # the fixture lines were measured with 8-bit weights
@pytest.mark.parametrize("workload", ["digits-resnet", "mnist1d-transformer"])
def test_cache_written_before_the_typed_result_still_hits(tmp_path, workload):
    # real lines of two searches run before issue 15 (--bn-batches 8, defaults otherwise)
    path = tmp_path / "cache.jsonl"
    shutil.copy(FIXTURES / "cache.jsonl", path)
    spec = EvalSpec(workload=workload, eval=EvalConfig(build=BuildConfig(bn_batches=8)))
    lines = [json.loads(line) for line in path.read_text().splitlines()]

    cache = CandidateCache(path, spec.cache_scope())

    [outcome] = cache.outcomes()
    [line] = [entry for entry in lines if entry["key"] == outcome.strategy.key()]
    assert isinstance(outcome.result, EvalResult)
    assert outcome.result.speedup == line["outcome"]["result"]["speedup"]
    assert outcome.result.accuracy_drop == line["outcome"]["result"]["accuracy_drop"]
    assert outcome.eval_seconds == line["outcome"]["eval_seconds"]


def test_old_line_rewritten_by_put_reads_back_equal(tmp_path):
    old = json.loads((FIXTURES / "cache.jsonl").read_text().splitlines()[1])
    outcome = Outcome.from_dict(old["outcome"])
    path = tmp_path / "cache.jsonl"

    CandidateCache(path, SCOPE).put(outcome)
    [back] = CandidateCache(path, SCOPE).outcomes()

    assert back == outcome
    written = json.loads(path.read_text())["outcome"]["result"]
    assert written["latency_input_median_ms"] == old["outcome"]["result"]["latency_median_ms"]
    assert "latency_median_ms" not in written
