"""Every reward mode, its bounds and its errors; `Score`, the value the reward reads."""

from __future__ import annotations

import math

import pytest

from envs.reward import FAILED_REWARD, RewardConfig, RewardError, Score, reward


def S(**values: float) -> Score:
    """A score from the named quantities (a missing one is NaN, as in `Score.from_dict`)."""
    return Score.from_dict(values)


def test_tradeoff_is_points_per_doubling() -> None:
    cfg = RewardConfig("tradeoff", lam=0.5)
    assert reward(S(accuracy_drop=0.5, speedup=4.0), cfg) == pytest.approx(0.5)
    assert reward(S(accuracy_drop=0.0, speedup=1.0), cfg) == 0.0


def test_tradeoff_prefers_speed_as_lam_grows() -> None:
    fast = S(accuracy_drop=2.0, speedup=8.0)
    accurate = S(accuracy_drop=0.1, speedup=1.5)
    assert reward(accurate, RewardConfig(lam=0.1)) > reward(fast, RewardConfig(lam=0.1))
    assert reward(fast, RewardConfig(lam=2.0)) > reward(accurate, RewardConfig(lam=2.0))


def test_target_penalises_shortfall_only() -> None:
    cfg = RewardConfig("target", target_speedup=4.0)
    assert reward(S(accuracy_drop=1.0, speedup=5.0), cfg) == pytest.approx(-1.0)
    assert reward(S(accuracy_drop=1.0, speedup=2.0), cfg) == pytest.approx(-11.0)


def test_max_drop_ranks_any_feasible_over_any_infeasible() -> None:
    cfg = RewardConfig("max-drop", max_drop=1.0)
    feasible = reward(S(accuracy_drop=0.9, speedup=1.1), cfg)
    infeasible = reward(S(accuracy_drop=1.5, speedup=50.0), cfg)
    assert feasible == pytest.approx(math.log2(1.1))
    assert infeasible == pytest.approx(-0.5)
    assert feasible > infeasible


def test_flops_proxy_uses_ideal_speedup() -> None:
    cfg = RewardConfig("flops-proxy", lam=1.0)
    assert reward(S(accuracy_drop=0.0, speedup=1.0, ideal_speedup=4.0), cfg) == 2.0


@pytest.mark.parametrize(
    "result",
    [
        None,
        S(accuracy_drop=math.nan, speedup=2.0),
        S(accuracy_drop=0.0, speedup=0.0),
        S(accuracy_drop=0.0, speedup=math.inf),
        S(speedup=2.0),
    ],
)
def test_failed_or_non_finite_gives_bounded_penalty(result: Score | None) -> None:
    for mode in ("tradeoff", "max-drop"):
        assert reward(result, RewardConfig(mode)) == FAILED_REWARD  # type: ignore[arg-type]


def test_failed_is_below_every_built_candidate() -> None:
    worst = S(accuracy_drop=100.0, speedup=1e-9)
    for cfg in (
        RewardConfig(),
        RewardConfig("target", target_speedup=1000.0),
        RewardConfig("max-drop", max_drop=0.0),
    ):
        assert reward(worst, cfg) > FAILED_REWARD
        assert math.isfinite(reward(worst, cfg))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "fast"}, "unknown reward mode"),
        ({"lam": -1.0}, "lam"),
        ({"mode": "target"}, "target speedup"),
        ({"mode": "target", "target_speedup": 0.5}, "> 1"),
        ({"max_drop": math.nan}, "max_drop"),
    ],
)
def test_invalid_config_names_the_field(kwargs: dict, match: str) -> None:
    with pytest.raises(RewardError, match=match):
        RewardConfig(**kwargs)


def test_score_round_trips_through_its_dict() -> None:
    score = Score(accuracy_drop=0.25, speedup=1.8, ideal_speedup=2.5, predicted=True)

    assert Score.from_dict(score.to_dict()) == score


def test_score_reads_an_old_probe_table_entry() -> None:
    # probe tables held a subset of the result's to_dict() before they held scores
    old = {"accuracy": 99.1, "accuracy_drop": 0.6, "speedup": 1.3, "latency_ms": 1.6,
           "ideal_speedup": 1.9, "flops": 1000}  # fmt: skip

    score = Score.from_dict(old)

    assert score == Score(accuracy_drop=0.6, speedup=1.3, ideal_speedup=1.9)
    assert not score.predicted


def test_a_measured_result_is_scored_by_its_fields() -> None:
    from runners.result import EvalResult
    from search_spaces import Strategy

    data = {"strategy": Strategy().to_dict(), "accuracy_drop": 0.5, "speedup": 4.0,
            "ideal_speedup": 2.0}  # fmt: skip
    result = EvalResult.from_dict(data)

    for cfg in (RewardConfig(), RewardConfig("flops-proxy"), RewardConfig("max-drop")):
        assert reward(result, cfg) == reward(Score.of(result), cfg)
    assert reward(result, RewardConfig(lam=0.5)) == pytest.approx(0.5)
