"""`CandidateRecord`: fields read from the typed result; ``candidates.jsonl`` lines written before
issue 15 (``tests/fixtures/pre15``) still load and round-trip."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from agent.records import CandidateRecord
from envs.reward import RewardConfig, reward
from runners.job import Outcome
from runners.result import EvalResult
from search_spaces import Strategy

FIXTURES = Path(__file__).parents[1] / "fixtures" / "pre15"


@pytest.mark.parametrize("line", [0, 1])
def test_pre_change_candidates_line_loads_with_its_figures(line: int) -> None:
    data = json.loads((FIXTURES / "candidates.jsonl").read_text().splitlines()[line])
    stored = data["outcome"]["result"]

    record = CandidateRecord.from_dict(data)

    assert isinstance(record.result, EvalResult)
    assert record.accuracy == stored["accuracy"]
    assert record.accuracy_drop == stored["accuracy_drop"]
    assert record.speedup == stored["speedup"]
    assert record.reward == data["reward"]
    # the search's reward of the record is recomputed from the typed fields exactly
    assert reward(record.result, RewardConfig()) == data["reward"]
    assert CandidateRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record


def test_failed_record_reads_nan_figures() -> None:
    outcome = Outcome(Strategy(), "failed", error="RuntimeError: boom")

    record = CandidateRecord(0, outcome, reward=-1.0, source="random")

    assert record.result is None
    assert math.isnan(record.accuracy) and math.isnan(record.speedup)
    assert math.isnan(record.accuracy_drop)
