"""The search's executor and agent, made from its config (one place for each choice)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from agent.base import Agent
from agent.config import SearchConfig
from agent.placement import Placement
from agent.records import CandidateRecord
from agent.search_dir import SearchDir

if TYPE_CHECKING:
    from runners.job import EvalSpec
    from search_spaces.space import DecisionSpace


def uses_ray_executor(config: SearchConfig) -> bool:
    """Whether candidates are measured on Ray (``executor = "ray"`` or a cluster address)."""
    return config.executor == "ray" or bool(config.address)


def make_executor(config: SearchConfig, spec: EvalSpec, placement: Placement) -> Any:
    """The executor that measures the search's candidates.

    Args:
        config: The search (executor kind, workers, timeout, threads).
        spec: What each worker builds and measures.
        placement: Cores of the local workers (`agent.placement.plan_placement`); ignored on
            Ray, which places its own workers.
    """
    from runners.local_executor import LocalExecutor
    from runners.ray_executor import RayExecutor

    if uses_ray_executor(config):
        return RayExecutor(
            spec, timeout_s=config.timeout_s, cpus_per_worker=config.threads, workers=config.workers
        )
    return LocalExecutor(
        spec,
        timeout_s=config.timeout_s,
        cpus=placement.worker_cpus,
        workers=config.workers,
        measure_cpus=placement.measure_cpus,
    )


def make_agent(
    config: SearchConfig,
    space: DecisionSpace,
    executor: Any,
    spec: EvalSpec,
    sdir: SearchDir,
    emit: Callable[[str, str], None],
    add_time: Callable[[str, float], None],
) -> Agent:
    """The search's agent; PPO first measures (or reads) its cost table with ``executor``.

    Args:
        emit: Progress callback ``(phase, detail)``.
        add_time: Adds seconds to a named driver timing (PPO's probes go to ``probes``).
    """
    from agent.baselines import RandomAgent, TPEAgent, UniformAgent

    if config.agent == "random":
        return RandomAgent(space, config.agent_seed)
    if config.agent == "uniform":
        return UniformAgent(space, config.agent_seed)
    if config.agent == "tpe":
        return TPEAgent(space, config.agent_seed)
    from agent.ppo import PPOAgent
    from agent.probes import PROBE_SHARE, measure_probes
    from envs.cost import flops_cost_model
    from envs.workloads.cache import default_cache_dir

    cost, probes = flops_cost_model(space), None
    if config.probes:
        table_dir = (config.cache_dir or default_cache_dir()) / "probes"
        start = time.perf_counter()
        cost, probes, _ = measure_probes(
            space,
            executor,
            table_dir,
            spec.cache_scope(),
            progress=lambda done, total: emit("probing", f"{done}/{total} single-choice probes"),
            budget_s=None if config.time_budget is None else PROBE_SHARE * config.time_budget,
        )
        add_time("probes", time.perf_counter() - start)
        sdir.write_cost_table(cost.to_dict())
    emit("building agent", "RLlib PPO")
    return PPOAgent(
        space,
        config.reward,
        cost,
        config.ppo,
        seed=config.agent_seed,
        checkpoint_dir=sdir.checkpoints_dir,
        probes=probes,
    )


def restore_agent(agent: Agent, records: Sequence[CandidateRecord]) -> None:
    """Bring a fresh agent up to date with a resumed search's records (its own `restore` if it
    has one, e.g. PPO from its last checkpoint; else it is told every record)."""
    restore = getattr(agent, "restore", None)
    if restore is not None:
        restore(list(records))
    else:
        for record in records:
            agent.tell(record)
