"""`EvalSpec` persisted as versioned JSON, and `Outcome` carrying a typed `EvalResult`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runners.build import BuildConfig
from runners.cache import scope_hash
from runners.evaluate import EvalConfig
from runners.job import EVAL_SPEC_TYPE, EVAL_SPEC_VERSION, EvalSpec, EvalSpecError, Outcome
from runners.latency import LatencyConfig
from runners.recovery import RECOVERY_PRESETS
from runners.result import EvalResult
from search_spaces import Strategy

FIXTURES = Path(__file__).parents[1] / "fixtures" / "pre15"

CUSTOM = EvalSpec(
    model="examples/byo_model.py:build",
    seed=3,
    cache_dir=Path("/tmp/layerpilot-cache"),
    eval=EvalConfig(
        runtime="torch-cpu",
        threads=2,
        latency=LatencyConfig(warmup=2, rel_tol=0.05, max_seconds=5.0, batch_size=4),
        build=BuildConfig(bn_batches=8, recovery=RECOVERY_PRESETS["short"]),
        eval_batch_size=64,
        time_latency=False,
    ),
)


@pytest.mark.parametrize("spec", [EvalSpec(workload="digits-resnet"), CUSTOM])
def test_eval_spec_round_trips_through_json(spec: EvalSpec) -> None:
    data = json.loads(json.dumps(spec.to_dict()))

    back = EvalSpec.from_dict(data)

    assert back == spec
    assert back.cache_scope() == spec.cache_scope()
    assert data["_type"] == EVAL_SPEC_TYPE and data["_version"] == EVAL_SPEC_VERSION
    assert set(data) == {
        "_type", "_version", "workload", "model", "model_sha256", "seed", "cache_dir", "eval",
    }  # fmt: skip


def test_eval_spec_nests_every_config() -> None:
    data = CUSTOM.to_dict()["eval"]

    assert data["latency"]["rel_tol"] == 0.05 and data["latency"]["batch_size"] == 4
    assert data["build"]["bn_batches"] == 8 and data["build"]["recovery"]["steps"] == 40
    assert "warm_inputs" in data["build"]["gates"]
    assert data["eval_batch_size"] == 64 and data["time_latency"] is False


@pytest.mark.usefixtures("eight_bit_int8")  # the fixture caches were measured with 8-bit weights
@pytest.mark.parametrize(
    ("workload", "scope"),
    [("digits-resnet", "3d2d91b0323ffbd0"), ("mnist1d-transformer", "2f07a55487c71886")],
)
def test_spec_of_a_pre_change_search_keeps_its_cache_scope(workload: str, scope: str) -> None:
    # the scope hashes of the fixture cache lines: searches run before issue 15 with
    # --bn-batches 8 and everything else at its default
    spec = EvalSpec(workload=workload, eval=EvalConfig(build=BuildConfig(bn_batches=8)))

    back = EvalSpec.from_dict(json.loads(json.dumps(spec.to_dict())))

    assert scope_hash(back.cache_scope()) == scope
    lines = [json.loads(line) for line in (FIXTURES / "cache.jsonl").read_text().splitlines()]
    assert scope in {line["scope"] for line in lines}


def test_eval_spec_fields_missing_from_eval_take_their_defaults() -> None:
    data = {
        "_type": EVAL_SPEC_TYPE,
        "_version": 1,
        "workload": "digits-resnet",
        "eval": {"runtime": "onnxruntime-cpu", "threads": 1, "latency": {"batch_size": 1}},
    }

    spec = EvalSpec.from_dict(data)

    assert spec == EvalSpec(workload="digits-resnet")


def _spec(**changes: object) -> dict:
    data = EvalSpec(workload="digits-resnet").to_dict()
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        node = data
        for name in parents:
            node = node[name]
        node[leaf] = value
    return data


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (_spec(_version=3), "_version 3 is not supported.*upgrade"),
        (_spec(_version="1"), "_version '1' is not supported"),
        (_spec(_type="layerpilot.Strategy"), "not an EvalSpec"),
        ({"workload": "digits-resnet"}, "not an EvalSpec"),
        (_spec(eval__latency__rel_tol="tight"), r"'eval\.latency\.rel_tol': expected a number"),
        (_spec(eval__latency__rel_tol=2.0), r"'eval\.latency'.*rel_tol must be in \(0, 1\)"),
        (_spec(eval__build__gates__seed=0.5), r"'eval\.build\.gates\.seed': expected an integer"),
        (_spec(eval__time_latency="yes"), r"'eval\.time_latency': expected true or false"),
        (_spec(eval__build__colour="red"), r"'eval\.build': unknown field\(s\) colour"),
        (_spec(eval="fast"), r"'eval': expected an object"),
        (_spec(seed="0"), "'seed' must be an integer"),
        (_spec(cache_dir=3), "'cache_dir' must be a string"),
        (_spec(model="m.py:build"), "exactly one of workload= or model="),
        (_spec(extra=1), r"unknown field\(s\) extra"),
    ],
)
def test_unreadable_eval_spec_names_the_field_or_version(data: dict, match: str) -> None:
    with pytest.raises(EvalSpecError, match=match) as raised:
        EvalSpec.from_dict(data)

    assert isinstance(raised.value, ValueError)


def _result() -> EvalResult:
    line = (FIXTURES / "cache.jsonl").read_text().splitlines()[1]
    return EvalResult.from_dict(json.loads(line)["outcome"]["result"])


def test_outcome_round_trips_its_typed_result() -> None:
    result = _result()
    outcome = Outcome(result.strategy, "ok", result=result, eval_seconds=3.5, worker="h:1")

    back = Outcome.from_dict(json.loads(json.dumps(outcome.to_dict())))

    assert back == outcome
    assert isinstance(back.result, EvalResult)
    # NaN-safe: a field the old record lacks reads as NaN on both sides
    assert json.dumps(back.to_dict()["result"], sort_keys=True) == json.dumps(
        result.to_dict(), sort_keys=True
    )


def test_outcome_reads_a_result_mapping_at_the_edge() -> None:
    strategy = Strategy.from_dict({"layer1.0": {"skip": True}})

    outcome = Outcome(strategy, "ok", result={"accuracy_drop": 0.5, "speedup": 2.0})

    assert isinstance(outcome.result, EvalResult)
    assert outcome.result.strategy == strategy and outcome.result.speedup == 2.0
    assert outcome.metric("speedup") == 2.0


def test_outcome_metric_is_nan_when_failed_or_missing() -> None:
    failed = Outcome(Strategy(), "failed", error="RuntimeError: boom")
    ok = Outcome(Strategy(), "ok", result=_result())

    assert failed.metric("speedup") != failed.metric("speedup")  # NaN
    assert ok.metric("no_such_metric") != ok.metric("no_such_metric")
    assert ok.metric("executed_share") == ok.result.action_metrics["executed_share"]  # type: ignore[union-attr]
