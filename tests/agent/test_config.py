"""Search config: file formats, CLI overrides, and clear errors for bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cli import build_parser
from agent.cli.search import search_config
from agent.config import ConfigError, SearchConfig, load_config


def parse(*argv: str):
    return search_config(build_parser().parse_args(["search", *argv]))


def test_defaults_are_the_documented_main_job() -> None:
    cfg = parse()
    assert (cfg.workload, cfg.agent, cfg.budget) == ("digits-resnet", "ppo", 150)
    assert (cfg.reward.mode, cfg.reward.lam) == ("tradeoff", 0.5)
    assert cfg.executor == "local" and cfg.tracking_uri is None


def test_toml_file_then_flags_override(tmp_path: Path) -> None:
    path = tmp_path / "search.toml"
    path.write_text(
        'agent = "tpe"\nbudget = 20\n[reward]\nlam = 2.0\n[ppo]\nhidden = [32, 32]\n'
        "[latency]\nmin_rounds = 3\nmax_rounds = 4\n"
    )
    cfg = load_config(path)
    assert cfg.agent == "tpe" and cfg.ppo.hidden == (32, 32) and cfg.latency.min_rounds == 3
    over = parse("--config", str(path), "--budget", "7", "--lam", "0.1")
    assert (over.agent, over.budget, over.reward.lam) == ("tpe", 7, 0.1)


def test_yaml_file_reads_the_same(tmp_path: Path) -> None:
    path = tmp_path / "search.yaml"
    path.write_text("agent: random\nreward:\n  mode: max-drop\n  max_drop: 0.5\n")
    cfg = load_config(path)
    assert cfg.agent == "random" and cfg.reward.max_drop == 0.5


def test_target_speedup_flag_selects_target_mode() -> None:
    cfg = parse("--target-speedup", "4")
    assert cfg.reward.mode == "target" and cfg.reward.target_speedup == 4.0


def test_actions_flag_opts_into_dynamic_skip() -> None:
    assert parse().actions is None
    cfg = parse("--actions", "skip, dynamic_skip")
    assert cfg.actions == ("skip", "dynamic_skip")


def test_recovery_flag_sets_a_single_fidelity() -> None:
    from agent.config import build_config
    from runners.recovery import RECOVERY_PRESETS

    assert parse().fidelities == ("none", "short", "full")
    assert build_config(parse()).recovery == RECOVERY_PRESETS["none"]
    cfg = parse("--recovery", "short")
    assert cfg.fidelities == ("short",)
    assert build_config(cfg).recovery == RECOVERY_PRESETS["short"]


def test_fidelities_and_time_budget_flags() -> None:
    cfg = parse("--fidelities", "short,full", "--eta", "3", "--time-budget", "1h30m")
    assert (cfg.fidelities, cfg.eta, cfg.time_budget) == (("short", "full"), 3, 5400.0)


def test_old_recovery_key_reads_as_a_single_fidelity() -> None:
    from agent.config import config_from_dict

    assert config_from_dict({"recovery": "short"}).fidelities == ("short",)


@pytest.mark.parametrize(
    ("fidelities", "match"),
    [
        (("full", "none"), "cheapest first"),
        (("none", "none"), "cheapest first"),
        (("none", "medium"), r"unknown level\(s\) \['medium'\]"),
        ((), "empty list"),
    ],
)
def test_bad_fidelities_are_refused(fidelities: tuple[str, ...], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        SearchConfig(fidelities=fidelities)


@pytest.mark.parametrize("text", ["20", "0", "ten minutes", "-5m"])
def test_time_budget_flag_refuses_what_is_not_a_duration(text: str) -> None:
    if text == "20":
        assert parse("--time-budget", text).time_budget == 20.0
        return
    with pytest.raises(SystemExit):
        parse("--time-budget", text)


def test_address_implies_ray_executor() -> None:
    assert parse("--address", "10.0.0.1:6379").executor == "ray"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("budget = 0\n", "budget"),
        ('agent = "genetic"\n', "unknown agent"),
        ("bugdet = 3\n", r"search config: unknown field\(s\) bugdet"),
        ('budget = "many"\n', r"^budget: expected an integer, got 'many'"),
        ("[reward]\nlam = 'x'\n", r"\[reward\]\.lam: expected a number"),
        ("[reward]\nmode = 'target'\n", "target speedup"),
        ("[ppo]\nlr = -1.0\n", r"\[ppo\]"),
        ("budget = \n", "not valid"),
        ('actions = ["prune", "teleport"]\n', r"actions: unknown \['teleport'\]"),
        ('fidelities = ["full", "none"]\n', "cheapest first"),
    ],
)
def test_bad_config_file_names_what_is_wrong(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(path)


def test_config_round_trips_through_json() -> None:
    import json

    from agent.config import config_from_dict

    cfg = SearchConfig(budget=9, agent="uniform", actions=("prune", "dynamic_skip"))
    again = config_from_dict(json.loads(cfg.to_json()))
    assert again == cfg
