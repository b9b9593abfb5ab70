"""Actions are closed under their registry: a toy action defined only here (one config, one
handler, one registration) is picked up by the env, the decision space, the FLOP cost table, the
surrogate, the baselines, the build and measurement, tracking and the CLI — and no module
outside ``search_spaces/actions/`` names an action."""

from __future__ import annotations

import ast
import copy
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from envs.cost import flops_cost_model
from envs.layer_env import EnvConfig, LayerEnv
from envs.reward import Score
from envs.surrogate import Surrogate
from search_spaces import Strategy, apply_plan, canonicalize, discover_units, resolve
from search_spaces.actions import (
    ACTIONS,
    ActionHandler,
    BuildContext,
    Contract,
    default_actions,
    plan_is_structural,
    record_metric_names,
    record_metrics,
    registered,
    removes_unit,
    with_everywhere,
)
from search_spaces.errors import InvalidActionValueError, UnknownActionError
from search_spaces.space import DecisionSpace
from search_spaces.units import Unit

from models import QUICK_LATENCY, make_model

ROOT = Path(__file__).resolve().parents[2]
TOY = "toy_scale"


# ------------------------------------------------------------------------------ the toy action
@dataclass(frozen=True)
class ToyScaleConfig:
    """How much a layer's weights are scaled."""

    factor: float
    """Multiplier of the weights; 1.0 leaves the layer as it is."""

    def __post_init__(self) -> None:
        if isinstance(self.factor, bool) or not isinstance(self.factor, int | float):
            raise InvalidActionValueError(f"{TOY} must be a number, got {self.factor!r}")
        if not 0.0 < self.factor <= 1.0:
            raise InvalidActionValueError(f"{TOY} must be in (0, 1], got {self.factor}")


class ToyScaleHandler(ActionHandler):
    """Scales a layer's weights; marks the layers it touched so its hooks can count them."""

    name = TOY
    summary = "scale a layer's weights (a test action)"
    order = 25
    choices = (1.0, 0.5)
    identity = 1.0
    metric_names = ("toy_scaled_layers",)
    contract = Contract(params="same", fewer_flops=False)

    def parse(self, value: Any) -> ToyScaleConfig:
        return ToyScaleConfig(value)

    def why_not(self, unit: Unit) -> str | None:
        return None if unit.kind in ("conv", "linear") else f"a {unit.kind}: scale its layers"

    def apply(self, ctx: BuildContext, unit: Unit, config: ToyScaleConfig) -> None:
        module = ctx.model.get_submodule(unit.name)
        with torch.no_grad():
            module.weight.mul_(config.factor)  # type: ignore[operator]
        module._toy_scaled = True  # type: ignore[assignment]

    def flops_saving(self, value: Any) -> float:
        return 0.5 * (1.0 - self.parse(value).factor)

    def surrogate_terms(self, shares: Mapping[str, float]) -> tuple[float, ...]:
        return (shares[self.name] ** 3,)

    def measure_extras(
        self, model: torch.nn.Module, eval_inputs: torch.Tensor, batch_size: int
    ) -> dict[str, Any]:
        scaled = sum(bool(getattr(m, "_toy_scaled", False)) for m in model.modules())
        return {"toy": {"scaled": scaled}} if scaled else {}

    def record_metrics(
        self, info: Mapping[str, Any], latency: Mapping[str, Any]
    ) -> dict[str, float]:
        toy = info.get("toy")
        return {"toy_scaled_layers": float(toy["scaled"])} if isinstance(toy, Mapping) else {}


@pytest.fixture
def toy() -> Iterator[ActionHandler]:
    with registered(ToyScaleHandler()) as handler:
        yield handler
    assert TOY not in ACTIONS


def _units(name: str = "resnet"):
    model, x = make_model(name)
    canonical = canonicalize(copy.deepcopy(model))
    return canonical, discover_units(canonical, x), x


def _fake(strategy: Strategy) -> Score:
    """A deterministic evaluator: faster and worse the more units the strategy sets."""
    n = len(strategy.units)
    return Score(accuracy_drop=0.5 * n, speedup=1.0 + 0.1 * n, ideal_speedup=1.0 + 0.1 * n)


def _toy_everywhere(space: DecisionSpace) -> list[np.ndarray]:
    column = space.action_names.index(TOY)
    choices = space.identity()
    for i, step in enumerate(space.steps):
        if TOY in step.options:
            choices[i][column] = 1
    return choices


# ------------------------------------------------------------------------------ the registry
def test_registered_adds_and_removes_the_toy_action(toy):
    assert ACTIONS[TOY] is toy
    assert TOY in default_actions()
    assert "toy_scaled_layers" in record_metric_names()
    assert not removes_unit(TOY, 0.5)


def test_without_registration_the_toy_action_is_unknown():
    with pytest.raises(UnknownActionError, match=f"unknown action '{TOY}'"):
        DecisionSpace(_units()[1], actions=[TOY])


def test_units_offer_the_toy_action_and_the_plan_applies_it(toy):
    canonical, units, x = _units()
    conv = units.get("conv1")

    plan = resolve(Strategy({"conv1": {TOY: 0.5}}), units)
    built, precisions = apply_plan(canonical, units, plan, x)

    assert conv.allows(TOY) and not units.get("layer1.0").allows(TOY)
    assert torch.allclose(built.conv1.weight, 0.5 * canonical.conv1.weight)
    assert precisions == {} and plan_is_structural(plan)


# ------------------------------------------------------------------------------ env and space
def test_decision_space_offers_the_toy_action_and_round_trips_it(toy):
    _, units, _ = _units()
    space = DecisionSpace(units)  # the default actions include it: searched_by_default

    strategy = space.to_strategy(_toy_everywhere(space))

    assert TOY in space.action_names
    assert space.values(TOY) == (1.0, 0.5)
    assert strategy.units and all(acts == {TOY: 0.5} for acts in strategy.units.values())
    assert space.to_strategy(space.from_strategy(strategy)) == strategy
    assert any(key.endswith(f":{TOY}") for key in space.parameters())


def test_env_action_space_has_the_toy_action_and_passes_check_env(toy):
    _, units, _ = _units()
    space = DecisionSpace(units, actions=[TOY, "skip"])
    env = LayerEnv(EnvConfig(space, _fake))

    check_env(env, skip_render_check=True)
    env.reset(seed=0)
    action = np.zeros(len(space.nvec), dtype=np.int64)
    action[space.action_names.index(TOY)] = 1
    done, info = False, {}
    while not done:
        _, _, done, _, info = env.step(action)

    assert list(env.action_space.nvec) == [2, 2]
    strategy = Strategy.from_json(info["strategy"])
    assert {a[TOY] for a in strategy.units.values()} == {0.5}


def test_flop_cost_table_prices_the_toy_action_by_its_saving(toy):
    _, units, _ = _units()
    space = DecisionSpace(units, actions=[TOY])
    table = flops_cost_model(space)

    for i, step in enumerate(space.steps):
        share = max(step.unit.flops_share, 1e-6)
        expected = math.log(max(1.0 - share * 0.25, 1e-3))
        assert table.log_latency[i][TOY][1] == pytest.approx(expected)
        assert table.log_latency[i][TOY][0] == 0.0
    lat, _ = table.estimate(_toy_everywhere(space))
    assert lat < 0


def test_surrogate_uses_the_toy_action_and_its_whole_model_term(toy):
    _, units, _ = _units()
    space = DecisionSpace(units, actions=[TOY])
    surrogate = Surrogate(space, flops_cost_model(space))
    everywhere = space.to_strategy(_toy_everywhere(space))
    rng = np.random.default_rng(0)
    data = [(s, _fake(s)) for s in (space.to_strategy(space.sample(rng)) for _ in range(12))]

    x, _, _ = surrogate.features(everywhere)
    surrogate.fit(data)
    prediction = surrogate(everywhere)

    # intercept, 3 table sums, the toy's term (1.0: every unit scaled), then the one-hots
    assert x[4] == 1.0 and len(x) == 5 + len(space) * int(space.nvec.sum())
    assert surrogate.samples == 12
    assert prediction is not None and prediction.predicted and math.isfinite(prediction.speedup)


def test_baselines_propose_the_toy_action(toy):
    from agent.baselines import RandomAgent, uniform_grid

    _, units, _ = _units()
    space = DecisionSpace(units, actions=["skip", TOY])
    agent = RandomAgent(space, seed=0)

    proposals = [agent.ask() for _ in range(5)]
    grid = uniform_grid(space)

    assert any(TOY in acts for p in proposals if p for acts in p.strategy.units.values())
    # identity, toy everywhere, skips, skips + toy on what is left
    assert len(grid) == 4
    assert grid[1] == space.to_strategy(_toy_everywhere(space))
    assert all(a == {"skip": True} for a in grid[2].units.values())


# ------------------------------------------------------------------------------ measure, track
def test_measured_toy_candidate_carries_and_tracks_the_toy_metric(toy, tmp_path):
    from mlflow import MlflowClient

    from agent.records import CandidateRecord
    from agent.tracking import Tracker, default_tracking_uri
    from envs.workloads import DataSplit, Workload
    from runners.build import BuildConfig, Subject
    from runners.evaluate import EvalConfig, measure
    from runners.job import Outcome
    from runners.result import EvalResult

    model, x = make_model("resnet")
    inputs = torch.randn(48, *x.shape[1:], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        split = DataSplit(inputs, model(inputs).argmax(1))
    subject = Subject.prepare(Workload("tiny-resnet", model, x, split.head(32), split))
    config = EvalConfig(latency=QUICK_LATENCY, build=BuildConfig(bn_batches=1))
    strategy = Strategy({"conv1": {TOY: 0.5}, "fc": {TOY: 0.5}})

    result = EvalResult.of(
        "tiny-resnet",
        strategy,
        config.runtime,
        measure(subject, strategy, config),
        measure(subject, Strategy(), config),
    )
    tracker = Tracker(default_tracking_uri(tmp_path), experiment="toy")
    tracker.start_search("s", {"agent": "random"}, {"name": "tiny"}, {"accuracy": 1.0}, tmp_path)
    outcome = Outcome(strategy, "ok", result=result, eval_seconds=1.0)
    run_id = tracker.log_candidate(CandidateRecord(0, outcome, reward=0.1, source="random"))
    run = MlflowClient(tracker.tracking_uri).get_run(run_id)

    assert result.info["toy"] == {"scaled": 2}
    assert result.action_metrics == {"toy_scaled_layers": 2.0}
    assert result.to_dict()["toy_scaled_layers"] == 2.0
    assert record_metrics(result.info, {}) == {"toy_scaled_layers": 2.0}
    assert run.data.metrics["toy_scaled_layers"] == 2.0
    assert any(TOY in key for key in run.data.params)


# ------------------------------------------------------------------------------ the CLI
def test_cli_profile_lists_the_toy_action_on_layers(toy, capsys):
    from agent.cli import main

    byo = f"{ROOT / 'examples' / 'byo_model.py'}:build"

    code = main(["profile", "--model", byo, "--runs", "1", "--json"])

    rows = json.loads(capsys.readouterr().out)["units"]
    assert code == 0
    assert {r["name"] for r in rows if TOY in r["allowed"]} == {
        r["name"] for r in rows if r["kind"] in ("conv", "linear")
    }


def test_search_config_and_help_accept_the_toy_action(toy, capsys):
    from agent.cli import main
    from agent.config import SearchConfig

    with pytest.raises(SystemExit):
        main(["search", "--help"])

    assert SearchConfig(actions=(TOY,)).actions == (TOY,)
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"default: {','.join(default_actions())};" in help_text
    assert TOY in default_actions()


# ------------------------------------------------------------------------------ built-in answers
def test_flop_cost_table_saves_flops_for_dynamic_skip():
    _, units, _ = _units()
    space = DecisionSpace(units, actions=["dynamic_skip"])
    table = flops_cost_model(space)

    assert len(space) > 0
    for i in range(len(space)):
        costs = table.log_latency[i]["dynamic_skip"]
        assert costs[0] == 0.0
        assert all(c < 0 for c in costs[1:])
        assert costs[2] < costs[1]  # a higher price α skips more


def test_with_everywhere_sets_one_action_on_every_unit_and_keeps_the_rest():
    s = Strategy({"a": {"prune": 0.5, "precision": "fp32"}, "b": {"precision": "fp32"}})

    out = with_everywhere(s, "precision", "int8")

    assert out.to_dict()["units"] == {"*": {"precision": "int8"}, "a": {"prune": 0.5}}
    with pytest.raises(InvalidActionValueError):
        with_everywhere(s, "precision", "int4")


def test_only_the_actions_package_names_an_action():
    """Code outside ``search_spaces/actions/`` asks the registry; it never compares against an
    action's name (string constants equal to one), except where listed here with the reason."""
    allowed = {
        # an export format defined as one action's value everywhere (``onnx-int8``)
        ("runners/export.py", "precision"),
    }
    names = set(ACTIONS)
    found = set()
    for package in ("agent", "envs", "runners", "search_spaces"):
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel.startswith("search_spaces/actions/"):
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and node.value in names:
                    found.add((rel, node.value))

    assert found <= allowed, f"action names outside the registry: {sorted(found - allowed)}"
