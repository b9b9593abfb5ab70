"""The candidate cache: round trip, scope isolation, crash tolerance."""

from __future__ import annotations

import json

import pytest

from runners.cache import CandidateCache
from runners.job import Outcome
from search_spaces import Strategy

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
