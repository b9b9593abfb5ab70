"""The Gymnasium environment: one episode walks a model's decision units in execution order.

At each step the agent sees one unit and chooses one index per action (a ``MultiDiscrete``
over ``DecisionSpace.action_names``: e.g. prune level, precision, skip, low-rank rank). Choices a
unit does not offer are mapped to the nearest legal one (``DecisionSpace.legalize``: a masked
action becomes the identity) and the legal ones are also given to the agent as a mask inside the
observation. Units inside a block the agent skipped are passed over. After the last unit the
strategy is built and evaluated by ``EnvConfig.evaluator`` — the real runner through the cache,
or, between real measurements, a surrogate — and the episode's only reward is computed from
that evaluation by `envs.reward.reward`.

Observation (float32, fixed length): the unit's embedding (`Unit.embedding`), then the running
state — position, predicted log-latency ratio so far, the most the remaining units could still
remove, predicted accuracy drop so far, the trade-off weight λ and the target speedup — then the
previous choice and the legal-choice mask.

In ``target`` mode the remaining units' choices are clipped (AMC's trick): a choice is replaced
by the least accuracy-costly legal one that still lets the cost model's predicted speedup reach
the target, so every episode's strategy is predicted to meet it.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from envs.cost import CostModel, flops_cost_model
from envs.reward import RewardConfig, Scored, reward
from search_spaces.space import DecisionSpace
from search_spaces.strategy import Strategy

ENV_ID = "layerpilot/LayerEnv-v0"
RAY_ENV_NAME = "layerpilot-layer-env"
STATE_SIZE = 8
OBS_CLIP = 10.0

Evaluator = Callable[[Strategy], Scored | None]
"""``strategy ->`` its `Scored` result (an ``EvalResult``, a surrogate's `Score`), or ``None``
when it failed."""


@dataclass
class EnvConfig:
    """What one environment needs."""

    space: DecisionSpace
    """The model's decision space (steps, actions, legal choices)."""
    evaluator: Evaluator
    """Measures (or predicts) a finished strategy."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """The reward mode and its parameter."""
    cost: CostModel | None = None
    """Per-choice cost table for the running state and target clipping (default: FLOP shares)."""
    lam_range: tuple[float, float] | None = None
    """Sample λ per episode, log-uniformly in this range, and show it to the policy: one
    conditioned policy then covers the whole speed–accuracy front. ``None``: always
    ``reward.lam``."""
    history: int = 512
    """How many finished episodes to remember (for the driver to pick proposals from)."""

    def __post_init__(self) -> None:
        if self.lam_range is not None:
            lo, hi = self.lam_range
            if not (0 < lo <= hi and math.isfinite(hi)):
                raise ValueError(f"lam_range must be 0 < low <= high, got {self.lam_range}")


@dataclass(frozen=True)
class Episode:
    """A finished episode: what was chosen and what it scored."""

    strategy: Strategy
    lam: float
    reward: float
    result: Scored | None


class LayerEnv(gym.Env[np.ndarray, np.ndarray]):
    """See the module docstring. Build with ``LayerEnv(EnvConfig(...))`` or, as RLlib and
    ``gymnasium.make`` do, with a mapping ``{"config": EnvConfig(...)}``."""

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 (gymnasium's own type)

    def __init__(self, config: EnvConfig | Mapping[str, Any]) -> None:
        if not isinstance(config, EnvConfig):
            config = config["config"]
        assert isinstance(config, EnvConfig)
        self.config = config
        self.space = config.space
        if len(self.space) == 0:
            raise ValueError("the model has no decision unit with a choice to make")
        self.cost = config.cost or flops_cost_model(self.space)
        n = len(self.space)
        self._embed = [s.unit.embedding(len(self.space.units)) for s in self.space.steps]
        self._masks = [self.space.mask(i).astype(np.float32) for i in range(n)]
        self._after_block = [self._end_of(i) for i in range(n)]
        self._best_from = self._best_suffix()
        self._total_best = float(self._best_from[0])
        size = len(self._embed[0]) + STATE_SIZE + len(self.space.nvec) + int(self.space.nvec.sum())
        self._obs_size = size
        self.observation_space = gym.spaces.Box(-OBS_CLIP, OBS_CLIP, (size,), np.float32)
        self.action_space = gym.spaces.MultiDiscrete(self.space.nvec)
        self.episodes: deque[Episode] = deque(maxlen=config.history)
        self._step = 0
        self._choices: list[np.ndarray] = []
        self._skipped: set[str] = set()
        self._lat = self._drop = 0.0
        self._prev = np.zeros(len(self.space.nvec), dtype=np.int64)
        self._lam = config.reward.lam

    # ---------------------------------------------------------------- gym API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        options = options or {}
        if "lam" in options:
            self._lam = float(options["lam"])
        elif self.config.lam_range is not None:
            lo, hi = self.config.lam_range
            self._lam = float(math.exp(self.np_random.uniform(math.log(lo), math.log(hi))))
        else:
            self._lam = self.config.reward.lam
        self._step = 0
        self._choices = self.space.identity()
        self._skipped = set()
        self._lat = self._drop = 0.0
        self._prev = np.zeros(len(self.space.nvec), dtype=np.int64)
        return self._observation(), {"lam": self._lam}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        i = self._step
        choice = self.space.legalize(i, action)
        if self.config.reward.mode == "target":
            choice = self._clip_to_target(i, choice)
        self._choices[i] = choice
        d_lat, d_drop = self.cost.choice_cost(i, choice)
        self._lat += d_lat
        self._drop += d_drop
        self._prev = choice
        if self._skips(i, choice):
            self._skipped.add(self.space.steps[i].unit.name)
        self._step = self._next_step(i + 1)
        if self._step < len(self.space):
            return self._observation(), 0.0, False, False, {}
        return self._finish()

    # ---------------------------------------------------------------- internals
    def _next_step(self, i: int) -> int:
        while i < len(self.space) and self.space.inside_skipped(i, self._skipped):
            i += 1
        return i

    def _finish(self) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        strategy = self.space.to_strategy(self._choices)
        result = self.config.evaluator(strategy)
        value = reward(result, self.config.reward.with_lam(self._lam))
        self.episodes.append(Episode(strategy, self._lam, value, result))
        obs = np.zeros(self._obs_size, dtype=np.float32)
        info = {"strategy": strategy.to_json(indent=None), "lam": self._lam, "failed": not result}
        return obs, float(value), True, False, info

    def _skips(self, i: int, choice: np.ndarray) -> bool:
        """Whether ``choice`` removes step ``i``'s unit (a skip): its inner steps are passed."""
        return self.space.remover(i, choice) is not None

    def _end_of(self, i: int) -> int:
        """The first step after step ``i`` that is not inside ``i``'s unit."""
        prefix = self.space.steps[i].unit.name + "."
        j = i + 1
        while j < len(self.space) and self.space.steps[j].unit.name.startswith(prefix):
            j += 1
        return j

    def _best_suffix(self) -> np.ndarray:
        """``best[i]``: the lowest Δ log latency steps ``i..`` can still reach (a skipped block
        removes its inner steps, so it is one option against the inner steps' best)."""
        n = len(self.space)
        best = np.zeros(n + 1)
        for i in range(n - 1, -1, -1):
            options = [
                self.cost.choice_cost(i, c)[0]
                + best[self._after_block[i] if self._skips(i, c) else i + 1]
                for c in self.cost.legal_choices(i)
            ]
            best[i] = min(options)
        return best

    def _reach(self, i: int, choice: np.ndarray) -> float:
        """Predicted log latency if ``choice`` is taken at ``i`` and the rest go all out."""
        nxt = self._after_block[i] if self._skips(i, choice) else i + 1
        return self._lat + self.cost.choice_cost(i, choice)[0] + float(self._best_from[nxt])

    def _clip_to_target(self, i: int, choice: np.ndarray) -> np.ndarray:
        target = self.config.reward.target_speedup
        assert target is not None
        need = -math.log(target) + 1e-9
        if self._reach(i, choice) <= need:
            return choice
        legal = self.cost.legal_choices(i)
        options = [c for c in legal if self._reach(i, c) <= need]
        if not options:  # cannot be met any more: go as fast as possible from here
            return min(legal, key=lambda c: self._reach(i, c))
        return min(options, key=lambda c: (self.cost.choice_cost(i, c)[1], -c.sum()))

    def _observation(self) -> np.ndarray:
        i = self._step
        n = len(self.space)
        nvec_scale = np.maximum(self.space.nvec - 1, 1)
        target = self.config.reward.target_speedup or 1.0
        state = np.array(
            [
                i / max(n - 1, 1),
                self._lat / 3.0,
                float(self._best_from[i]) / 3.0,
                self._total_best / 3.0,
                min(self._drop, 100.0) / 10.0,
                math.log2(self._lam + 1e-3) / 4.0,
                math.log2(target) / 3.0,
                float(self.config.reward.mode == "target"),
            ],
            dtype=np.float32,
        )
        obs = np.concatenate(
            [
                self._embed[i],
                state,
                (self._prev / nvec_scale).astype(np.float32),
                self._masks[i],
            ]
        )
        obs = np.nan_to_num(obs, nan=0.0, posinf=OBS_CLIP, neginf=-OBS_CLIP)
        return np.clip(obs, -OBS_CLIP, OBS_CLIP).astype(np.float32)


def register() -> None:
    """Register the env with Gymnasium (``gymnasium.make(ENV_ID, config=EnvConfig(...))``)."""
    if ENV_ID not in gym.registry:
        gym.register(
            ENV_ID,
            entry_point="envs.layer_env:LayerEnv",
            nondeterministic=True,  # rewards come from timings
        )


def register_with_ray() -> str:
    """Register the env with Ray Tune (env config ``{"config": EnvConfig(...)}``); returns its
    name for ``AlgorithmConfig.environment(env=...)``."""
    from ray.tune.registry import register_env

    register_env(RAY_ENV_NAME, lambda env_config: LayerEnv(env_config))
    return RAY_ENV_NAME
