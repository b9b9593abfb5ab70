"""Cheap per-(step, choice) estimates of what an action does to latency and accuracy.

A `CostModel` answers, without building anything, "how much does this choice change the
model's log-latency and accuracy?" as an *additive* table: the environment uses it for the
running state in the observation and for the ``target`` mode's clipping, and the surrogate uses
it as its prior. Two tables exist:

- `flops_cost_model`: from FLOP shares alone (no measurement; used when nothing was probed).
- `probe_cost_model`: measured — each entry comes from a real evaluation of the model with that
  one choice applied (HAQ's lookup table, but measured on the deployment runtime, including the
  accuracy each choice costs). `agent.probes` produces the probe results.

Additivity is an approximation (int8 on neighbouring layers shares quantize/dequantize nodes;
accuracy losses compound); `envs.surrogate` learns corrections from whole-model measurements,
and the benchmark reports how far the table's sums are from them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from envs.reward import Scored
from search_spaces.actions import get_action
from search_spaces.space import DecisionSpace


@dataclass
class CostModel:
    """Additive table: ``log_latency[step][action][index]`` and ``drop[...]`` (points).

    Index 0 (identity) is always 0. ``source`` says where the numbers came from.
    """

    space: DecisionSpace
    log_latency: list[dict[str, np.ndarray]]
    drop: list[dict[str, np.ndarray]]
    source: str

    def choice_cost(self, step: int, choice: Sequence[int] | np.ndarray) -> tuple[float, float]:
        """``(Δ log latency, Δ accuracy drop)`` of one legal choice at ``step``."""
        names = self.space.action_names
        table_lat, table_drop = self.log_latency[step], self.drop[step]
        remover = self.space.remover(step, choice)
        if remover is not None:
            # a removed (skipped) block removes its own cost; the other actions on it do not apply
            idx = int(choice[names.index(remover)])
            return float(table_lat[remover][idx]), float(table_drop[remover][idx])
        lat = drop = 0.0
        for name, idx in zip(names, choice, strict=True):
            if idx and name in table_lat:
                lat += float(table_lat[name][idx])
                drop += float(table_drop[name][idx])
        return lat, drop

    def best_log_latency(self, step: int) -> float:
        """The most negative Δ log latency any legal choice at ``step`` can give (≤ 0)."""
        return min(0.0, min(lat for lat, _ in self.all_costs(step)))

    def all_costs(self, step: int) -> list[tuple[float, float]]:
        return [self.choice_cost(step, c) for c in self.legal_choices(step)]

    def legal_choices(self, step: int) -> list[np.ndarray]:
        """Every legal choice at ``step`` (the product of its actions' options)."""
        options = self.space.steps[step].options
        grids = [range(len(options.get(n, (0,)))) for n in self.space.action_names]
        mesh = np.array(np.meshgrid(*grids, indexing="ij")).reshape(len(grids), -1).T
        return [row.astype(np.int64) for row in mesh]

    def estimate(self, choices: Sequence[np.ndarray]) -> tuple[float, float]:
        """Summed ``(log latency ratio, accuracy drop)`` of a whole set of choices."""
        lat = drop = 0.0
        skipped: set[str] = set()
        for step, choice in enumerate(choices):
            if self.space.inside_skipped(step, skipped):
                continue
            legal = self.space.legalize(step, choice)
            d_lat, d_drop = self.choice_cost(step, legal)
            lat += d_lat
            drop += d_drop
            if self.space.remover(step, legal) is not None:
                skipped.add(self.space.steps[step].unit.name)
        return lat, drop

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "steps": [
                {
                    "unit": self.space.steps[i].unit.name,
                    "log_latency": {k: v.tolist() for k, v in self.log_latency[i].items()},
                    "drop": {k: v.tolist() for k, v in self.drop[i].items()},
                }
                for i in range(len(self.space))
            ],
        }


def _empty(space: DecisionSpace) -> list[dict[str, np.ndarray]]:
    return [
        {name: np.zeros(len(values)) for name, values in step.options.items()}
        for step in space.steps
    ]


def flops_cost_model(space: DecisionSpace) -> CostModel:
    """An unmeasured table from FLOP shares: each value saves the share of the unit's FLOPs
    its action says (``ActionHandler.flops_saving``: prune r saves ~r, int8 ¾, a skip the
    block's, a dynamic skip the share of inputs expected to skip it).

    Accuracy costs are unknown without measuring, so they are set to small placeholders that
    grow with the FLOPs removed (enough for the env's running state, never reported).
    """
    lat, drop = _empty(space), _empty(space)
    for i, step in enumerate(space.steps):
        share = max(step.unit.flops_share, 1e-6)
        for name, values in step.options.items():
            handler = get_action(name)
            for j, value in enumerate(values):
                saved = share * handler.flops_saving(value)
                lat[i][name][j] = math.log(max(1.0 - saved, 1e-3))
                drop[i][name][j] = 10.0 * saved
    return CostModel(space, lat, drop, source="flops")


def probe_cost_model(
    space: DecisionSpace, probes: Mapping[tuple[int, str, int], Scored | None]
) -> CostModel:
    """A measured table from single-choice probes.

    Args:
        space: The decision space the probes were made in.
        probes: ``(step, action, index) ->`` the `Score` (or ``EvalResult``) of the model with
            only that choice applied, or ``None`` where the probe failed (it then costs a
            50-point drop and no speedup, so the agent stays away from it).
    """
    base = flops_cost_model(space)
    lat, drop = _empty(space), _empty(space)
    for (step, name, index), result in probes.items():
        if result is not None:
            speedup = float(result.speedup)
            if not (math.isfinite(speedup) and speedup > 0) or not math.isfinite(
                float(result.accuracy_drop)
            ):
                result = None
        if result is None:
            lat[step][name][index] = 0.0
            drop[step][name][index] = 50.0
            continue
        speedup = float(result.speedup)
        lat[step][name][index] = -math.log(max(speedup, 1e-3))
        drop[step][name][index] = float(result.accuracy_drop)
    for i, each in enumerate(space.steps):  # anything not probed keeps the FLOPs estimate
        for name, values in each.options.items():
            for j in range(1, len(values)):
                if (i, name, j) not in probes:
                    lat[i][name][j] = base.log_latency[i][name][j]
                    drop[i][name][j] = base.drop[i][name][j]
    return CostModel(space, lat, drop, source="probes")


def probe_plan(space: DecisionSpace) -> list[tuple[int, str, int]]:
    """The single-choice probes that fill a measured table: every non-identity value of every
    action at every step."""
    return [
        (i, name, j)
        for i, step in enumerate(space.steps)
        for name, values in step.options.items()
        for j in range(1, len(values))
    ]


def probe_strategy(space: DecisionSpace, probe: tuple[int, str, int]) -> Any:
    """The strategy that applies one probe's choice and nothing else."""
    step, name, index = probe
    choices = space.identity()
    choices[step][space.action_names.index(name)] = index
    return space.to_strategy(choices)


def collective_probes(space: DecisionSpace) -> list[Any]:
    """Whole-model probes the additive table cannot stand for: each non-identity value of a
    ``collective`` action (precision) on every unit at once. A lone int8 layer pays a
    quantize/dequantize pair at both ends and is often *slower*; int8 pays off when its
    neighbours are int8 too, which only a whole-model measurement shows. These train the
    surrogate; they are not part of the table."""
    out = []
    for name in space.action_names:
        if not get_action(name).collective:
            continue
        a = space.action_names.index(name)
        for value in space.values(name)[1:]:
            choices = space.identity()
            for i, step in enumerate(space.steps):
                options = step.options.get(name, ())
                if value in options:
                    choices[i][a] = options.index(value)
            out.append(space.to_strategy(choices))
    return out
