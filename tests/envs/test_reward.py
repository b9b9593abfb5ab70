"""Every reward mode, its bounds and its errors."""

from __future__ import annotations

import math

import pytest

from envs.reward import FAILED_REWARD, RewardConfig, RewardError, reward


def test_tradeoff_is_points_per_doubling() -> None:
    cfg = RewardConfig("tradeoff", lam=0.5)
    assert reward({"accuracy_drop": 0.5, "speedup": 4.0}, cfg) == pytest.approx(0.5)
    assert reward({"accuracy_drop": 0.0, "speedup": 1.0}, cfg) == 0.0


def test_tradeoff_prefers_speed_as_lam_grows() -> None:
    fast = {"accuracy_drop": 2.0, "speedup": 8.0}
    accurate = {"accuracy_drop": 0.1, "speedup": 1.5}
    assert reward(accurate, RewardConfig(lam=0.1)) > reward(fast, RewardConfig(lam=0.1))
    assert reward(fast, RewardConfig(lam=2.0)) > reward(accurate, RewardConfig(lam=2.0))


def test_target_penalises_shortfall_only() -> None:
    cfg = RewardConfig("target", target_speedup=4.0)
    assert reward({"accuracy_drop": 1.0, "speedup": 5.0}, cfg) == pytest.approx(-1.0)
    assert reward({"accuracy_drop": 1.0, "speedup": 2.0}, cfg) == pytest.approx(-11.0)


def test_max_drop_ranks_any_feasible_over_any_infeasible() -> None:
    cfg = RewardConfig("max-drop", max_drop=1.0)
    feasible = reward({"accuracy_drop": 0.9, "speedup": 1.1}, cfg)
    infeasible = reward({"accuracy_drop": 1.5, "speedup": 50.0}, cfg)
    assert feasible == pytest.approx(math.log2(1.1))
    assert infeasible == pytest.approx(-0.5)
    assert feasible > infeasible


def test_flops_proxy_uses_ideal_speedup() -> None:
    cfg = RewardConfig("flops-proxy", lam=1.0)
    assert reward({"accuracy_drop": 0.0, "speedup": 1.0, "ideal_speedup": 4.0}, cfg) == 2.0


@pytest.mark.parametrize(
    "result",
    [
        None,
        {"accuracy_drop": math.nan, "speedup": 2.0},
        {"accuracy_drop": 0.0, "speedup": 0.0},
        {"accuracy_drop": 0.0, "speedup": math.inf},
        {"speedup": 2.0},
    ],
)
def test_failed_or_non_finite_gives_bounded_penalty(result: dict | None) -> None:
    for mode in ("tradeoff", "max-drop"):
        assert reward(result, RewardConfig(mode)) == FAILED_REWARD  # type: ignore[arg-type]


def test_failed_is_below_every_built_candidate() -> None:
    worst = {"accuracy_drop": 100.0, "speedup": 1e-9}
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
