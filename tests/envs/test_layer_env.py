"""The Gymnasium env: check_env, masking, skipping, target clipping, reward from the evaluator."""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from envs.cost import flops_cost_model
from envs.layer_env import ENV_ID, EnvConfig, LayerEnv, register
from envs.reward import FAILED_REWARD, RewardConfig, Score, reward
from search_spaces import Strategy, canonicalize, discover_units
from search_spaces.space import DecisionSpace

from models import make_model


def fake_evaluator(strategy: Strategy) -> Score:
    """Deterministic stand-in for a measurement: more actions, faster and less accurate."""
    n = sum(len(a) for a in strategy.units.values())
    return Score(accuracy_drop=0.25 * n, speedup=1.0 + 0.2 * n, ideal_speedup=1.0 + 0.3 * n)


@pytest.fixture(scope="module", params=["resnet", "transformer"])
def space(request: pytest.FixtureRequest) -> DecisionSpace:
    model, x = make_model(request.param)
    return DecisionSpace(discover_units(canonicalize(model), x))


def run_episode(env: LayerEnv, policy: Any, seed: int = 0) -> tuple[float, dict[str, Any], int]:
    env.reset(seed=seed)
    steps, done = 0, False
    while not done:
        _, r, done, truncated, info = env.step(policy())
        assert not truncated
        steps += 1
    return r, info, steps


@pytest.mark.parametrize("mode", ["tradeoff", "target", "max-drop", "flops-proxy"])
def test_env_passes_gymnasium_check_env(space: DecisionSpace, mode: str) -> None:
    target = 2.0 if mode == "target" else None
    cfg = EnvConfig(space, fake_evaluator, RewardConfig(mode, target_speedup=target))  # type: ignore[arg-type]
    check_env(LayerEnv(cfg), skip_render_check=True)


def test_env_registered_with_gymnasium_as_nondeterministic(space: DecisionSpace) -> None:
    register()
    assert gym.spec(ENV_ID).nondeterministic
    env = gym.make(ENV_ID, config=EnvConfig(space, fake_evaluator))
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    env.close()


def test_episode_reward_comes_from_the_evaluator(space: DecisionSpace) -> None:
    env = LayerEnv(EnvConfig(space, fake_evaluator, RewardConfig(lam=0.5)))
    r, info, _ = run_episode(env, env.action_space.sample)
    strategy = Strategy.from_json(info["strategy"])
    assert r == pytest.approx(reward(fake_evaluator(strategy), RewardConfig(lam=0.5)))
    assert env.episodes[-1].strategy == strategy


def test_failed_evaluation_gives_finite_penalty(space: DecisionSpace) -> None:
    env = LayerEnv(EnvConfig(space, lambda s: None))
    r, info, _ = run_episode(env, env.action_space.sample)
    assert r == FAILED_REWARD and info["failed"]


def test_illegal_actions_never_crash_and_map_to_legal(space: DecisionSpace) -> None:
    env = LayerEnv(EnvConfig(space, fake_evaluator))
    top = env.action_space.nvec - 1
    r, info, _ = run_episode(env, lambda: top)
    assert math.isfinite(r)
    strategy = Strategy.from_json(info["strategy"])
    from search_spaces import resolve

    resolve(strategy, space.units)  # every chosen action is legal on its unit


def test_skipping_a_block_passes_over_its_units(space: DecisionSpace) -> None:
    if not any("skip" in s.options for s in space.steps):
        pytest.skip("no skippable block")
    env = LayerEnv(EnvConfig(space, fake_evaluator))
    skip = space.action_names.index("skip")

    def always_skip() -> np.ndarray:
        a = np.zeros_like(space.nvec)
        a[skip] = 1
        return a

    _, info, steps = run_episode(env, always_skip)
    _, _, identity_steps = run_episode(env, lambda: np.zeros_like(space.nvec))
    assert steps < identity_steps == len(space)
    assert all(a == {"skip": True} for a in Strategy.from_json(info["strategy"]).units.values())


def test_same_seed_same_lam_and_observations(space: DecisionSpace) -> None:
    cfg = EnvConfig(space, fake_evaluator, lam_range=(0.1, 4.0))
    a, b = LayerEnv(cfg), LayerEnv(cfg)
    obs_a, info_a = a.reset(seed=7)
    obs_b, info_b = b.reset(seed=7)
    assert info_a["lam"] == info_b["lam"]
    np.testing.assert_array_equal(obs_a, obs_b)
    _, info_c = a.reset(seed=8)
    assert info_c["lam"] != info_a["lam"]


def test_target_mode_clips_actions_to_reach_the_target(space: DecisionSpace) -> None:
    target = 1.5
    cost = flops_cost_model(space)
    env = LayerEnv(EnvConfig(space, fake_evaluator, RewardConfig("target", target_speedup=target)))
    if math.exp(-sum(cost.best_log_latency(i) for i in range(len(space)))) < target:
        pytest.skip("target unreachable on this model")
    _, info, _ = run_episode(env, lambda: np.zeros_like(space.nvec))  # agent asks for nothing
    choices = space.from_strategy(Strategy.from_json(info["strategy"]))
    predicted_log_latency, _ = cost.estimate(choices)
    assert math.exp(-predicted_log_latency) >= target - 1e-6


def test_observation_shows_lam_to_the_policy(space: DecisionSpace) -> None:
    env = LayerEnv(EnvConfig(space, fake_evaluator))
    low, _ = env.reset(seed=0, options={"lam": 0.1})
    high, _ = env.reset(seed=0, options={"lam": 3.0})
    assert not np.array_equal(low, high)


def test_env_registered_with_ray_builds_the_same_env(space: DecisionSpace) -> None:
    from ray.tune.registry import ENV_CREATOR, _global_registry

    from envs.layer_env import register_with_ray

    name = register_with_ray()
    creator = _global_registry.get(ENV_CREATOR, name)
    env = creator({"config": EnvConfig(space, fake_evaluator)})
    assert isinstance(env, LayerEnv)
    check_env(env, skip_render_check=True)
