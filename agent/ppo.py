"""The RL agent: RLlib PPO (new API stack) trained on a surrogate between real measurements.

A real candidate costs seconds, and PPO needs thousands of episodes, so the policy does not
learn from real measurements alone (model-based RL, in the spirit of HAQ's lookup table and
of surrogate-assisted NAS):

1. the episode env (`envs.layer_env.LayerEnv`) gets a `envs.surrogate.Surrogate` as its
   evaluator: a measured per-(unit, choice) cost table (`envs.cost`, from single-choice probes)
   plus ridge corrections fitted on every real candidate so far;
2. while the executor measures a candidate, the driver calls `think`: one PPO iteration on the
   surrogate (≈ 0.5 s, hundreds of cheap episodes' worth of steps);
3. `ask` proposes the best not-yet-measured strategy the policy produced recently, by predicted
   reward; with a λ-conditioned policy (λ sampled per episode and shown in the observation) the
   proposals rotate over λ bins, so one search fills the whole speed–accuracy front;
4. `tell` adds the real measurement and refits the surrogate. A measurement at a cheap
   fidelity teaches its *optimistic* deployed score (`agent.records.CandidateRecord.optimistic`,
   the one promotion ranks by): the mean estimate of a heavily cut candidate lies above the
   accuracy bound although many such candidates recover, and a policy trained on it never
   proposes them; those that do not recover are measured at the deployed level and taught as
   they are.

Every reported figure is a real measurement; the surrogate only steers.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.base import Proposal
from agent.records import CandidateRecord
from envs.cost import CostModel
from envs.layer_env import EnvConfig, Episode, LayerEnv, register_with_ray
from envs.reward import RewardConfig, Scored, reward
from envs.surrogate import Surrogate
from search_spaces.space import DecisionSpace
from search_spaces.strategy import Strategy

PROBE_ROWS_UNTIL = 8
"""Strategies with a deployed (recovered or estimated) score after which the surrogate stops
fitting the probe table's unrecovered rows (`PPOAgent._data`)."""


@dataclass(frozen=True)
class PPOSettings:
    """PPO and surrogate-loop settings (``[ppo]`` in a search config file)."""

    lr: float = 3e-4
    """Adam learning rate."""
    train_batch: int = 256
    """Env steps per PPO iteration (one `think`, ~0.3 s on one core). Small on purpose: the
    driver only notices a finished measurement between iterations."""
    minibatch: int = 64
    """SGD minibatch size."""
    epochs: int = 6
    """SGD passes over each train batch."""
    hidden: tuple[int, ...] = (128, 128)
    """Hidden layer sizes of the policy and value MLPs."""
    entropy: float = 0.01
    """Entropy bonus (keeps the policy exploring between refits)."""
    lam_range: tuple[float, float] | None = (0.05, 16.0)
    """λ range the policy is conditioned on (``tradeoff``/``flops-proxy`` modes; accuracy
    points per doubling of speed). ``None`` trains for the search's λ only."""
    lam_bins: int = 5
    """Proposals rotate over this many log-spaced λ bins (plus the search's own λ)."""
    warmup_iterations: int = 16
    """Surrogate iterations before the first proposal."""
    policy_proposals: bool = True
    """Rank the policy's own samples as proposals (False, with ``local_candidates`` > 0, is the
    surrogate-only ablation: no RL in the proposals)."""
    local_candidates: int = 32
    """Neighbours of measured Pareto-optimal strategies ranked next to the policy's samples at
    each proposal (0: policy samples only)."""
    explore_after: int = 12
    """Iterations without a new strategy from the policy before `ask` explores instead (a
    mutation of the best measured strategy), so the search never stalls."""
    checkpoint_every: int = 25
    """Save an RLlib checkpoint every this many iterations (0: never)."""

    def __post_init__(self) -> None:
        if self.train_batch < self.minibatch or self.minibatch < 1:
            raise ValueError("ppo: need 1 <= minibatch <= train_batch")
        if self.lr <= 0 or self.epochs < 1 or not self.hidden:
            raise ValueError("ppo: lr > 0, epochs >= 1 and at least one hidden layer")


def build_algorithm(env_config: EnvConfig, settings: PPOSettings, seed: int) -> Any:
    """The one place the RLlib ``AlgorithmConfig`` chain is built (new API stack).

    Env runners and learners stay in the driver process (``num_env_runners=0``,
    ``num_learners=0``): the env's evaluator is the driver's surrogate, and on a 2-core machine
    the other core belongs to the measurement worker.
    """
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    config = (
        PPOConfig()
        .debugging(seed=seed, log_level="ERROR")
        .environment(env=register_with_ray(), env_config={"config": env_config})
        .env_runners(num_env_runners=0, num_envs_per_env_runner=1)
        .learners(num_learners=0)
        .training(
            lr=settings.lr,
            gamma=1.0,  # one terminal reward per episode: no discounting across units
            lambda_=0.95,
            train_batch_size_per_learner=settings.train_batch,
            minibatch_size=settings.minibatch,
            num_epochs=settings.epochs,
            entropy_coeff=settings.entropy,
            vf_loss_coeff=0.5,
            vf_clip_param=1000.0,  # rewards are in accuracy points, not unit-scaled
        )
        .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=list(settings.hidden)))
        .reporting(metrics_num_episodes_for_smoothing=20)
    )
    return config.build_algo()


def _local_envs(algo: Any) -> list[LayerEnv]:
    """The env instances of the driver's local env runner (RLlib wraps them in a vector env)."""
    vector = algo.env_runner.env.unwrapped
    return [env.unwrapped for env in vector.envs]


class PPOAgent:
    """PPO on a surrogate, proposing its best unmeasured strategies (see module docstring)."""

    name = "ppo"

    def __init__(
        self,
        space: DecisionSpace,
        reward_config: RewardConfig,
        cost: CostModel,
        settings: PPOSettings | None = None,
        seed: int = 0,
        checkpoint_dir: Path | None = None,
        probes: Sequence[tuple[Strategy, Scored | None]] | None = None,
    ) -> None:
        self.settings = settings or PPOSettings()
        self.reward_config = reward_config
        self.space = space
        self.surrogate = Surrogate(space, cost)
        self._probes: list[tuple[Strategy, Scored | None]] = list(probes or [])
        self._observed: dict[str, tuple[Strategy, Scored | None]] = {}
        """What each measured strategy scores for the deployed model (its latest record)."""
        self._recovered: set[str] = set()
        """Strategies whose deployed score is an estimate or a measurement after recovery."""
        self.surrogate.fit(self._data)
        conditioned = reward_config.mode in ("tradeoff", "flops-proxy")
        lam_range = self.settings.lam_range if conditioned else None
        env_config = EnvConfig(
            space, self.surrogate, reward=reward_config, cost=cost, lam_range=lam_range
        )
        self.algo = build_algorithm(env_config, self.settings, seed)
        self._envs = _local_envs(self.algo)
        for env in self._envs:  # RLlib may have copied the config: point it at our surrogate
            env.config.evaluator = self.surrogate
        self._bins = self._lam_bins(lam_range)
        self._turn = 0
        self._seen: set[str] = set()
        self._pool: dict[str, Episode] = {}
        self.iterations = 0
        self._idle = 0
        self._measured: dict[str, tuple[float, Strategy]] = {}
        self._results: dict[str, tuple[Strategy, float, float]] = {}
        self.checkpoint_dir = checkpoint_dir
        self.last_checkpoint: Path | None = None
        self.rng = np.random.default_rng(seed)

    def _lam_bins(self, lam_range: tuple[float, float] | None) -> list[tuple[float, float]]:
        lam = self.reward_config.lam
        own = (lam * 0.8, lam * 1.25)
        if lam_range is None:
            return [own]
        edges = np.geomspace(lam_range[0], lam_range[1], self.settings.lam_bins + 1)
        return [own, *zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True)]

    # ---------------------------------------------------------------- Agent protocol
    def think(self) -> None:
        self.algo.train()
        self.iterations += 1
        self._idle += 1
        every = self.settings.checkpoint_every
        if self.checkpoint_dir is not None and every and self.iterations % every == 0:
            self.save_checkpoint()
        for env in self._envs:
            while env.episodes:
                episode = env.episodes.popleft()
                key = episode.strategy.key()
                if key not in self._seen and not episode.strategy.is_identity:
                    old = self._pool.get(key)
                    if old is None or episode.reward > old.reward:
                        self._pool[key] = episode
        if len(self._pool) > 768:  # keep the freshest (ask re-scores a bin of it each time)
            self._pool = dict(list(self._pool.items())[-512:])

    def ask(self) -> Proposal | None:
        if self.iterations < self.settings.warmup_iterations:
            return None
        lo, hi = self._bins[self._turn % len(self._bins)]
        self._turn += 1
        lam = math.sqrt(lo * hi)
        config = self.reward_config.with_lam(lam)
        in_bin = [e for e in self._pool.values() if lo <= e.lam <= hi] or list(self._pool.values())
        options = [(e.strategy, "policy") for e in in_bin] if self.settings.policy_proposals else []
        options += [(s, "local") for s in self._mutants(self.settings.local_candidates)]
        best: tuple[float, Strategy, str, Scored] | None = None
        for strategy, origin in options:
            pred = self.surrogate(strategy)  # re-predict: the surrogate may have been refit
            value = reward(pred, config)
            if pred is not None and (best is None or value > best[0]):
                best = (value, strategy, origin, pred)
        if best is None:
            return self._explore() if self._idle >= self.settings.explore_after else None
        value, strategy, origin, predicted = best
        self._idle = 0
        self._pool.pop(strategy.key(), None)
        self._seen.add(strategy.key())
        extras: dict[str, Any] = {
            "lam": round(lam, 4),
            "origin": origin,
            "predicted_reward": round(value, 4),
            "predicted_speedup": round(float(predicted.speedup), 4),
            "predicted_drop": round(float(predicted.accuracy_drop), 4),
        }
        return Proposal(strategy, extras)

    def _mutants(self, count: int) -> list[Strategy]:
        """Unmeasured neighbours (1–2 units changed) of measured Pareto-optimal strategies.

        The policy samples whole strategies; near its best ones the surrogate can also rank
        small edits, which the policy's sampling (its entropy shrinks as it trains) stops
        producing. Each proposal is the best by predicted reward among both kinds.
        """
        front = _front(list(self._results.values()))
        out: list[Strategy] = []
        for _ in range(count if front else 0):
            base = front[int(self.rng.integers(len(front)))]
            choices = self.space.from_strategy(base)
            fresh = self.space.sample(self.rng)
            for i in self.rng.choice(len(self.space), size=int(self.rng.integers(1, 3))):
                choices[i] = fresh[i]
            strategy = self.space.to_strategy(choices)
            if strategy.key() not in self._seen and not strategy.is_identity:
                out.append(strategy)
        return out

    def _explore(self) -> Proposal | None:
        """The policy produced nothing new for a while (it has settled on strategies already
        measured, or on the unchanged model): mutate the best measured strategy at 1–3 units
        so the surrogate keeps getting information where the policy looks."""
        best = max(self._measured.values(), key=lambda m: m[0], default=None)
        for _ in range(50):
            choices = self.space.from_strategy(best[1]) if best else self.space.sample(self.rng)
            fresh = self.space.sample(self.rng)
            for i in self.rng.choice(len(self.space), size=int(self.rng.integers(1, 4))):
                choices[i] = fresh[i]
            strategy = self.space.to_strategy(choices)
            if strategy.key() not in self._seen and not strategy.is_identity:
                self._seen.add(strategy.key())
                self._idle = 0
                return Proposal(strategy, {"origin": "explore", "lam": self.reward_config.lam})
        return None

    def tell(self, record: CandidateRecord) -> None:
        self._note(record)
        self.surrogate.fit(self._data)

    @property
    def _data(self) -> list[tuple[Strategy, Scored | None]]:
        """What the surrogate is fitted on: every measured strategy's deployed score, plus the
        probe table's rows until ``PROBE_ROWS_UNTIL`` measurements are estimates or measurements
        of a recovered model (the table is measured without recovery: once enough is known about
        the deployed model, its rows would pull the fit towards the unrecovered landscape; the
        table still enters every strategy's features)."""
        observed = list(self._observed.values())
        if len(self._recovered) >= PROBE_ROWS_UNTIL:
            return observed
        return [*self._probes, *observed]

    def _note(self, record: CandidateRecord) -> None:
        """Remember a measured candidate (the surrogate is refit by the caller). A strategy
        measured again at a higher fidelity replaces what was known of it."""
        key = record.strategy.key()
        self._seen.add(key)
        self._pool.pop(key, None)
        if key in self._observed and not record.ok:
            return  # a failure at a higher fidelity does not erase what a lower one measured
        if record.ok and (record.estimated or record.fidelity != "none"):
            self._recovered.add(key)
        self._observed[key] = (record.strategy, taught_score(record))
        if record.ok:
            assert record.deployed_drop is not None
            self._measured[key] = (record.reward, record.strategy)
            self._results[key] = (record.strategy, record.speedup, record.deployed_drop)

    @property
    def exhausted(self) -> bool:
        return False

    def save_checkpoint(self) -> Path:
        """Save the algorithm under ``checkpoint_dir/iter-NNNNN`` (written aside, then renamed,
        so a kill mid-save leaves the previous checkpoint as the latest)."""
        assert self.checkpoint_dir is not None
        path = self.checkpoint_dir / f"iter-{self.iterations:05d}"
        staging = self.checkpoint_dir / f".iter-{self.iterations:05d}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        self.algo.save_to_path(str(staging.resolve()))
        shutil.rmtree(path, ignore_errors=True)
        os.replace(staging, path)
        self.last_checkpoint = path
        return path

    def restore(self, records: list[CandidateRecord]) -> None:
        """Resume: load the latest checkpoint (if any was saved), then learn every record."""
        latest = latest_checkpoint(self.checkpoint_dir) if self.checkpoint_dir else None
        if latest is not None:
            self.algo.restore_from_path(str(latest.resolve()))
            self.iterations = int(latest.name.split("-")[1])
            self.last_checkpoint = latest
        for record in records:
            self._note(record)
        self.surrogate.fit(self._data)  # once, on everything

    def close(self) -> None:
        self.algo.stop()


def taught_score(record: CandidateRecord) -> Scored | None:
    """What the surrogate learns from ``record`` (None: it failed): its *optimistic* deployed
    score, as promotion ranks it. Optimism under uncertainty: a cheap measurement cannot tell
    which aggressive candidates recover, and the mean estimate would teach the policy that none
    does; a measurement at the deployed level replaces it with the truth."""
    return record.optimistic if record.ok else None


def latest_checkpoint(directory: Path) -> Path | None:
    """The newest complete ``iter-NNNNN`` checkpoint in ``directory``."""
    done = sorted(directory.glob("iter-[0-9]*")) if directory.is_dir() else []
    return done[-1] if done else None


def _front(results: list[tuple[Strategy, float, float]]) -> list[Strategy]:
    """Strategies no other measured one beats on both speedup and accuracy drop."""
    finite = [r for r in results if math.isfinite(r[1]) and math.isfinite(r[2])]
    return [
        s
        for s, speed, drop in finite
        if not any(
            o_s >= speed and o_d <= drop and (o_s, o_d) != (speed, drop) for _, o_s, o_d in finite
        )
    ]
