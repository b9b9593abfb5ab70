from __future__ import annotations

import json
from pathlib import Path

import pytest

from search_spaces import MalformedStrategyError, Strategy


def test_strategy_round_trips_through_json_with_type_and_version():
    s = Strategy.from_dict({"*": {"precision": "int8"}, "layer1.0.conv1": {"prune": 0.5}})

    data = json.loads(s.to_json())

    assert data["_type"] == "layerpilot.Strategy"
    assert data["_version"] == 1
    assert Strategy.from_json(s.to_json()) == s
    assert Strategy.from_dict(data).key() == s.key()


def test_strategy_key_is_independent_of_key_order():
    a = Strategy.from_dict({"b": {"skip": True}, "a": {"prune": 0.25, "precision": "int8"}})
    b = Strategy.from_dict({"a": {"precision": "int8", "prune": 0.25}, "b": {"skip": True}})

    assert a.key() == b.key()
    assert a.to_json() == b.to_json()


def test_strategy_key_differs_when_a_value_differs():
    assert (
        Strategy.from_dict({"a": {"prune": 0.25}}).key()
        != Strategy.from_dict({"a": {"prune": 0.5}}).key()
    )


def test_strategy_is_read_only():
    s = Strategy.from_dict({"a": {"prune": 0.25}})

    with pytest.raises(TypeError):
        s.units["a"]["prune"] = 0.9  # type: ignore[index]


def test_with_unit_merges_actions_without_changing_the_original():
    s = Strategy.from_dict({"a": {"prune": 0.25}})

    t = s.with_unit("a", precision="int8")

    assert dict(t.units["a"]) == {"precision": "int8", "prune": 0.25}
    assert dict(s.units["a"]) == {"prune": 0.25}


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "a strategy is a JSON object"),
        ('{"a": 0.5}', "expected an object of actions"),
        ('{"a": {"prune": [0.5]}}', "values must be numbers"),
        ('{"_type": "other", "units": {}}', "_type"),
        ('{"_version": 99, "units": {}}', "version 99 is not supported"),
        ('{"units": {}, "extra": 1}', "unexpected top-level keys"),
    ],
)
def test_malformed_strategy_raises_with_the_reason(text, fragment):
    with pytest.raises(MalformedStrategyError, match=fragment):
        Strategy.from_json(text)


def test_load_missing_file_names_the_path(tmp_path):
    with pytest.raises(MalformedStrategyError, match="does not exist"):
        Strategy.load(tmp_path / "nope.json")


def test_identity_strategy_is_identity():
    assert Strategy().is_identity
    assert not Strategy.from_dict({"a": {"prune": 0.1}}).is_identity


def test_an_oversized_strategy_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    from search_spaces.strategy import MAX_STRATEGY_BYTES

    path = tmp_path / "huge.json"
    with path.open("w") as f:  # valid JSON, far too big
        f.write('{"a": {"prune": 0.5}, "pad": "' + "x" * MAX_STRATEGY_BYTES + '"}')

    with pytest.raises(MalformedStrategyError, match=r"huge\.json.*bytes; the limit"):
        Strategy.load(path)
    with pytest.raises(MalformedStrategyError, match="characters; the limit"):
        Strategy.from_json(path.read_text())


def test_non_utf8_and_deeply_nested_strategies_are_clear_errors(tmp_path: Path) -> None:
    latin = tmp_path / "latin.json"
    latin.write_bytes('{"caf\xe9": {"skip": true}}'.encode("latin-1"))
    with pytest.raises(MalformedStrategyError, match=r"latin\.json.*not UTF-8"):
        Strategy.load(latin)
    with pytest.raises(MalformedStrategyError, match="nested too deeply"):
        Strategy.from_json("[" * 100_000 + "]" * 100_000)
