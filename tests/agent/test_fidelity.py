"""Multi-fidelity search: calibration, ASHA promotion, confirmation, and fidelity on every
record, cache line and MLflow run — on a fake evaluator whose cheap scores are noisy, biased
versions of the deployed one."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from agent import search as search_module
from agent.config import SearchConfig
from agent.export import SearchSource, choose_candidate
from agent.fidelity import PRIOR_SIGMA, PRIORS, Calibration, Schedule, promotions, to_confirm
from agent.records import CandidateRecord
from agent.report import load_records, write_report
from agent.search_dir import DamagedRecordWarning, SearchDirError
from envs.reward import RewardConfig, reward
from runners.job import EvalSpec, Outcome
from search_spaces import Strategy

LEVELS = ("none", "short", "full")


def _unit_noise(key: str, salt: str) -> float:
    """A deterministic value in [0, 1) per (strategy, salt)."""
    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def true_drop(strategy: Strategy) -> float:
    """The deployed (full-recovery) drop of the fake model: 0–4 points."""
    return 4.0 * _unit_noise(strategy.key(), "true")


def fake_speedup(strategy: Strategy) -> float:
    return 1.0 + 0.25 * len(strategy.units)


def fake_drop(strategy: Strategy, fidelity: str) -> float:
    """Cheap levels lose far more and rank with noise: none ≈ 6·d + 15 ± 3, short ≈ 2·d + 3 ± 1."""
    d = true_drop(strategy)
    noise = _unit_noise(strategy.key(), fidelity) - 0.5
    if fidelity == "none":
        return 6.0 * d + 15.0 + 6.0 * noise
    if fidelity == "short":
        return 2.0 * d + 3.0 + 2.0 * noise
    return d


class FidelityExecutor:
    """Measures at once; the accuracy depends on the fidelity asked for (`fake_drop`)."""

    slots = 1

    def __init__(self) -> None:
        self.submitted: list[tuple[str, str]] = []
        self._done: list[Outcome] = []

    def start(self) -> dict[str, Any]:
        return {"accuracy": 99.0, "latency": {"median_ms": 2.0, "p90_ms": 2.1}, "flops": 1000}

    def submit(
        self, strategy: Strategy, timeout_s: float | None = None, fidelity: str | None = None
    ) -> None:
        level = fidelity or "none"
        self.submitted.append((strategy.key(), level))
        drop, speedup = fake_drop(strategy, level), fake_speedup(strategy)
        result = {
            "accuracy": 99.0 - drop,
            "accuracy_drop": drop,
            "speedup": speedup,
            "latency_ms": 2.0 / speedup,
            "flops": 900,
        }
        seconds = {"none": 1.0, "short": 4.0, "full": 20.0}[level]
        outcome = Outcome(strategy, "ok", result, eval_seconds=seconds, fidelity=level)
        self._done.append(outcome)

    def poll(self, timeout: float | None = None) -> list[Outcome]:
        out, self._done = self._done, []
        return out

    @property
    def pending(self) -> int:
        return len(self._done)

    def close(self) -> None:
        pass


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FidelityExecutor:
    executor = FidelityExecutor()
    monkeypatch.setattr(search_module, "make_executor", lambda config, spec, placement: executor)
    return executor


def config(tmp_path: Path, workload_cache: Path, **kw: Any) -> SearchConfig:
    defaults: dict[str, Any] = {
        "agent": "random",
        "budget": 30,
        "eta": 3,
        "out": tmp_path / "search",
        "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "log_model": False,
        "cache_dir": workload_cache,
    }
    return SearchConfig(**{**defaults, **kw})


def record(index: int, key: str, fidelity: str, drop: float, speedup: float) -> CandidateRecord:
    strategy = Strategy.from_dict({f"unit{key}": {"skip": True}})
    result = {"accuracy": 99.0 - drop, "accuracy_drop": drop, "speedup": speedup}
    outcome = Outcome(strategy, "ok", result, fidelity=fidelity)
    return CandidateRecord(index, outcome, reward(outcome.result, RewardConfig()), "random")


def _unit(strategy: Strategy) -> str:
    return next(iter(strategy.units))


# -- the rules, on hand-made records ------------------------------------------------------


def test_calibration_learns_the_cheap_to_deployed_map_from_pairs() -> None:
    schedule = Schedule(("none", "full"))
    records = []
    for i, d in enumerate([0.2, 0.5, 1.0, 2.0, 3.0]):
        records.append(record(2 * i, str(i), "none", 10 * d + 5, 2.0))
        records.append(record(2 * i + 1, str(i), "full", d, 2.0))
    calibration = Calibration.fit(schedule, records)
    assert calibration.pairs("none") == 5
    # a cheap drop of 15 (true 1.0) is estimated near 1, not at 15
    assert abs(calibration.deployed_drop("none", 15.0) - 1.0) < 0.5
    assert calibration.deployed_drop("full", 0.7) == 0.7  # the top level is a measurement
    no_pairs = Calibration.fit(schedule, records[::2])  # the measured prior alone
    a, b = PRIORS["none"]
    assert no_pairs.deployed_drop("none", 15.0) == pytest.approx(math.expm1(a + b * math.log1p(15)))
    assert Calibration.fit(Schedule(("medium", "full")), []).deployed_drop("medium", 3.0) == 3.0


def test_promotions_take_the_best_third_of_each_level_highest_level_first() -> None:
    schedule = Schedule(("none", "short", "full"), eta=3)
    records = [record(i, str(i), "none", float(i), 4.0) for i in range(6)]  # 0 and 1 are best
    records.append(record(6, "0", "short", 0.1, 4.0))
    records += [record(7 + i, str(10 + i), "short", 5.0, 1.5) for i in range(2)]
    due = promotions(records, schedule, RewardConfig(), busy=set())
    keys = [(_unit(s), level) for s, level in due]
    assert keys == [("unit0", "full"), ("unit1", "short")]  # unit0 is at short already
    busy = {(due[1][0].key(), "short")}
    assert [level for _, level in promotions(records, schedule, RewardConfig(), busy)] == ["full"]


def test_promotion_is_optimistic_where_the_cheap_level_says_little() -> None:
    """Without fine-tuning a 60-point drop may recover fully: with only the prior, a 10x
    candidate that lost 60 points is promoted before a 2x one that lost 1, although its mean
    estimate (what the record carries) is worse. Once the search's own pairs show that big cheap
    drops stay big, the spread shrinks and the mild one wins."""
    schedule = Schedule(("none", "full"), eta=2)
    fast, mild = record(0, "fast", "none", 60.0, 10.0), record(1, "mild", "none", 1.0, 2.0)
    calibration = Calibration.fit(schedule, [fast, mild])
    assert calibration.deployed_drop("none", 60.0) > calibration.deployed_drop("none", 1.0) + 1
    assert calibration.sigmas["none"] == pytest.approx(PRIOR_SIGMA["none"])
    [(promoted, _)] = promotions([fast, mild], schedule, RewardConfig(), busy=set())
    assert _unit(promoted) == "unitfast"

    pairs = []  # the search learns: cheap d -> deployed d / 3, exactly
    for i, d in enumerate([3.0, 10.0, 30.0, 60.0, 80.0, 90.0]):
        pairs += [record(10 + 2 * i, f"p{i}", "none", d, 3.0),
                  record(11 + 2 * i, f"p{i}", "full", d / 3, 3.0)]  # fmt: skip
    learnt = Calibration.fit(schedule, pairs)
    assert learnt.sigmas["none"] < PRIOR_SIGMA["none"] / 1.5
    due = promotions([fast, mild, *pairs], schedule, RewardConfig(), busy=set())
    assert ("unitmild", "full") in {(_unit(s), level) for s, level in due}
    assert ("unitfast", "full") not in {(_unit(s), level) for s, level in due}


def test_promotion_to_the_deployed_level_ranks_for_the_accuracy_bound() -> None:
    """With a bound, the rung below the deployed level sends the fastest candidate that may
    hold within it, not the mild one the reward prefers; without one, the reward decides."""
    schedule = Schedule(("short", "full"), eta=3)
    records = [
        record(0, "mild", "short", 0.5, 4.0),  # the best reward
        record(1, "fast", "short", 8.0, 12.0),  # optimistically within 1 point
        record(2, "hopeless", "short", 30.0, 20.0),  # even optimistically far outside
        record(3, "slow", "short", 0.0, 0.9),
        record(4, "x", "short", 1.0, 5.0),
        record(5, "y", "short", 3.0, 3.0),
    ]
    assert Calibration.fit(schedule, records).optimistic_drop("short", 8.0) <= 1.0
    by_reward = promotions(records, schedule, RewardConfig(), busy=set())
    assert {_unit(s) for s, _ in by_reward} == {"unitmild", "unitx"}
    by_goal = promotions(records, schedule, RewardConfig(), busy=set(), bound=1.0)
    assert [_unit(s) for s, _ in by_goal] == ["unitfast", "unitx"]


def test_confirmation_takes_the_estimated_front_within_the_bound_fastest_first() -> None:
    schedule = Schedule(("cheap", "full"))  # no prior: the identity
    records = [
        record(0, "a", "cheap", 0.5, 8.0),
        record(1, "b", "cheap", 0.2, 4.0),
        record(2, "c", "cheap", 5.0, 20.0),  # on the front but outside the bound
        record(3, "d", "cheap", 0.9, 3.0),  # dominated by b
        record(5, "e", "cheap", 0.0, 0.7),  # on the front, but slower than the baseline
    ]
    todo = to_confirm(records, schedule, RewardConfig(), 1.0, busy=set())
    assert [_unit(s) for s in todo][:2] == ["unita", "unitb"]
    assert "unitd" not in [_unit(s) for s in todo]
    assert "unite" not in [_unit(s) for s in todo]
    records.append(record(4, "a", "full", 3.0, 8.0))  # confirmed: it did not hold up
    todo = to_confirm(records, schedule, RewardConfig(), 1.0, busy=set())
    assert _unit(todo[0]) == "unitb"


# -- the driver, on the fake evaluator ----------------------------------------------------


def test_search_promotes_the_truly_best_and_measures_nothing_twice(
    tmp_path: Path, fake: FidelityExecutor, workload_cache: Path
) -> None:
    """The truly best is the user's goal: the fastest candidate whose deployed drop is within
    1 point. The cheap levels see it only through noise and a bias, yet it is measured at full
    and it is the search's best at 1 point."""
    result = search_module.run_search(config(tmp_path, workload_cache))
    records = result.records
    assert len(fake.submitted) == len(set(fake.submitted))  # never twice at one fidelity
    proposed = {r.strategy.key(): r.strategy for r in records}
    assert len(proposed) == 30 == result.summary["candidates"]

    within = [s for s in proposed.values() if true_drop(s) <= 1.0]
    truly_best = max(within, key=lambda s: (fake_speedup(s), -true_drop(s)))
    at_full = {r.strategy.key() for r in records if r.fidelity == "full"}
    assert truly_best.key() in at_full
    # the search's figures are deployed measurements: the best of those at full
    assert result.summary["summary_fidelity"] == "full"
    assert result.summary["best_speedup_at_1pt"] == fake_speedup(truly_best)
    best = records[result.summary["best_index"]]
    assert best.fidelity == "full" and not best.estimated
    # cheap records carry an estimate of the deployed drop, far below what they measured
    cheap = [r for r in records if r.fidelity == "none"]
    assert all(r.estimated for r in cheap)
    calibrated = [r for r in cheap[-10:] if r.deployed_drop is not None]
    assert sum(r.deployed_drop < r.accuracy_drop - 5 for r in calibrated) >= 8
    # and the optimistic drop promotion ranks by (what PPO learns from), below the estimate
    assert all(r.optimistic_drop is not None and r.optimistic_drop < r.deployed_drop for r in cheap)
    assert best.optimistic_drop is None and best.optimistic == best.deployed


def test_fidelity_is_on_records_cache_lines_and_mlflow_runs(
    tmp_path: Path, fake: FidelityExecutor, workload_cache: Path
) -> None:
    result = search_module.run_search(config(tmp_path, workload_cache, budget=9))
    on_disk = load_records(result.out)
    assert [(r.strategy.key(), r.fidelity) for r in on_disk] == [
        (r.strategy.key(), r.fidelity) for r in result.records
    ]
    assert {r.fidelity for r in on_disk} == set(LEVELS)
    twice = next(r for r in on_disk if r.fidelity == "full").strategy.key()
    lines = [json.loads(line) for line in (result.out / "cache.jsonl").read_text().splitlines()]
    mine = [line for line in lines if line["key"] == twice]
    assert {line["outcome"]["fidelity"] for line in mine} == set(LEVELS)
    assert len({line["scope"] for line in mine}) == 3  # the fidelity is part of the cache key

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    state = json.loads((result.out / "search.json").read_text())
    runs = client.search_runs(
        [state["mlflow"]["experiment_id"]],
        f"tags.mlflow.parentRunId = '{result.parent_run_id}'",
    )
    assert len(runs) == len(on_disk)
    tags = {(r.data.tags["layerpilot.fidelity"], r.data.tags["layerpilot.estimated"]) for r in runs}
    assert ("full", "false") in tags and ("none", "true") in tags
    assert all("deployed_drop" in r.data.metrics for r in runs)


def test_resume_across_fidelities_measures_nothing_again(
    tmp_path: Path, fake: FidelityExecutor, workload_cache: Path
) -> None:
    first = search_module.run_search(config(tmp_path, workload_cache, budget=12))
    log = first.out / "candidates.jsonl"
    lines = log.read_text().splitlines()
    assert any(json.loads(line)["outcome"]["fidelity"] != "none" for line in lines[-4:])
    log.write_text("\n".join(lines[:-4]) + "\n")  # killed before the last 4 landed (cached)
    measured = list(fake.submitted)

    second = search_module.run_search(config(tmp_path, workload_cache, budget=20), resume=True)
    assert len(fake.submitted) == len(set(fake.submitted))  # across both runs
    landed = [(r.strategy.key(), r.fidelity) for r in second.records]
    assert len(landed) == len(set(landed))
    assert set(measured) <= set(landed)  # the 4 cut-off records came back from the cache
    assert second.summary["candidates"] == 20


def test_a_damaged_middle_record_is_landed_again_from_the_cache_on_resume(
    tmp_path: Path, fake: FidelityExecutor, workload_cache: Path
) -> None:
    first = search_module.run_search(config(tmp_path, workload_cache, budget=8))
    log = first.out / "candidates.jsonl"
    lines = log.read_text().splitlines()
    damaged = json.loads(lines[3])
    lines[3] = lines[3][: len(lines[3]) // 2]  # a torn write in the middle
    log.write_text("\n".join(lines) + "\n")

    with pytest.warns(DamagedRecordWarning, match="candidates.jsonl:4"):
        second = search_module.run_search(config(tmp_path, workload_cache, budget=10), resume=True)

    assert len(fake.submitted) == len(set(fake.submitted))  # nothing measured again
    indices = [r.index for r in second.records]
    assert len(indices) == len(set(indices))
    again = [r for r in second.records if r.extras.get("origin") == "resumed"]
    key = (damaged["outcome"]["strategy"], damaged["outcome"]["fidelity"])
    assert [(r.strategy.to_dict(), r.fidelity) for r in again] == [key]


def test_a_record_cut_from_a_finished_search_has_one_mlflow_run_after_resume(
    tmp_path: Path, fake: FidelityExecutor, workload_cache: Path
) -> None:
    first = search_module.run_search(config(tmp_path, workload_cache, budget=6))
    log = first.out / "candidates.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:-1]) + "\n")  # the last record lost, its run still there

    second = search_module.run_search(config(tmp_path, workload_cache, budget=7), resume=True)

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    state = json.loads((second.out / "search.json").read_text())
    runs = client.search_runs(
        [state["mlflow"]["experiment_id"]],
        f"tags.mlflow.parentRunId = '{second.parent_run_id}' and tags.`layerpilot.kind` = "
        "'candidate'",
    )
    indices = [r.data.tags["layerpilot.index"] for r in runs]
    assert len(indices) == len(set(indices)) == len(second.records)


def test_a_cluster_address_where_nothing_listens_fails_at_once_naming_it(
    tmp_path: Path, fake: FidelityExecutor, workload_cache: Path
) -> None:
    from agent.config import ConfigError

    with pytest.raises(ConfigError, match=r"--address 127\.0\.0\.1:1: nothing answers there"):
        search_module.run_search(config(tmp_path, workload_cache, address="127.0.0.1:1"))

    assert not (tmp_path / "search" / "search.json").exists()  # never left RUNNING


def test_mlflow_opens_on_the_answer_description_view_and_clean_charts(
    tmp_path: Path, fake: FidelityExecutor, workload_cache: Path
) -> None:
    """Read back through MLflow's client: the parent's description names and links the best
    within the bound, the saved view filters to it and sorts by speedup, bookkeeping figures
    are tags (not chart metrics), and the report is logged as HTML with the plot inline."""
    from agent.ui import landing_url

    result = search_module.run_search(config(tmp_path, workload_cache, budget=9))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    parent = client.get_run(result.parent_run_id)
    experiment = client.get_experiment(parent.info.experiment_id)

    best = max(
        (r for r in result.records if r.fidelity == "full" and r.accuracy_drop <= 1.0),
        key=lambda r: r.speedup,
    )
    note = parent.data.tags["mlflow.note.content"]
    assert f"[candidate {best.index}](#/experiments/{experiment.experiment_id}/runs/" in note
    assert f"{best.speedup:.2f}x" in note
    assert "wall_seconds" not in parent.data.metrics and "hypervolume" in parent.data.metrics
    assert float(parent.data.tags["layerpilot.search.wall_seconds"]) > 0

    view = json.loads(experiment.tags[f"mlflow.sharedViewState.{result.parent_run_id}"])
    assert view["orderByKey"] == "metrics.`speedup`" and view["orderByAsc"] is False
    assert "metrics.`speedup`" in view["selectedColumns"]
    shown = client.search_runs(
        [experiment.experiment_id], view["searchFilter"], order_by=["metrics.speedup DESC"]
    )
    assert shown and shown[0].data.metrics["speedup"] == best.speedup
    assert all(r.data.tags["layerpilot.fidelity"] == "full" for r in shown)
    assert all(r.data.metrics["accuracy_drop"] <= 1.0 for r in shown)
    url = landing_url(uri, "http://127.0.0.1:5000")
    assert url.endswith(f"viewStateShareKey={result.parent_run_id}")

    html = client.download_artifacts(result.parent_run_id, "report.html", str(tmp_path))
    assert "data:image/png;base64," in Path(html).read_text()


def test_report_json_names_the_best_and_the_front_with_their_fidelity(
    tmp_path: Path, fake: FidelityExecutor, workload_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.cli import main

    result = search_module.run_search(config(tmp_path, workload_cache, budget=9))
    capsys.readouterr()

    assert main(["report", str(result.out), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)

    assert data["candidates"] == len(result.records)
    assert data["best_at_1pt"]["fidelity"] == "full"
    assert data["front"] and {row["fidelity"] for row in data["front"]} == {"full"}
    assert Path(data["plot"]).exists()


def test_search_out_pointing_at_a_file_is_refused(
    tmp_path: Path, fake: FidelityExecutor, workload_cache: Path
) -> None:
    (tmp_path / "search").write_text("my notes")

    with pytest.raises(SearchDirError, match="is a file, not a directory"):
        search_module.run_search(config(tmp_path, workload_cache, budget=3))

    assert (tmp_path / "search").read_text() == "my notes"


def test_search_into_a_directory_that_holds_a_search_is_refused(
    tmp_path: Path, fake: FidelityExecutor, workload_cache: Path
) -> None:
    first = search_module.run_search(config(tmp_path, workload_cache, budget=3))
    before = (first.out / "candidates.jsonl").read_text()

    with pytest.raises(SearchDirError, match=r"already holds a search.*--resume"):
        search_module.run_search(config(tmp_path, workload_cache, budget=3))

    assert (first.out / "candidates.jsonl").read_text() == before


def test_time_budget_confirms_the_front_and_uses_the_rest(
    tmp_path: Path, fake: FidelityExecutor, workload_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = {"now": 0.0}

    def perf_counter() -> float:
        return clock["now"]

    submit = fake.submit

    def timed(strategy: Strategy, timeout_s: float | None = None, fidelity: str | None = None):
        clock["now"] += {"none": 1.0, "short": 4.0, "full": 20.0}[fidelity or "none"]
        submit(strategy, timeout_s, fidelity)

    fake.submit = timed  # type: ignore[method-assign]
    monkeypatch.setattr(search_module.time, "perf_counter", perf_counter)
    result = search_module.run_search(
        # no seeds: here the uniform seeds reach full and leave no front to confirm
        config(tmp_path, workload_cache, budget=1000, time_budget=300.0, confirm=2, seeds=False)
    )
    assert clock["now"] <= 300.0 + 20.0  # at most the measurement in flight runs over
    assert result.summary["candidates"] < 1000
    assert result.summary["summary_fidelity"] == "full"
    # the front within the bound is measured at full, by promotion or confirmation ...
    schedule = Schedule(LEVELS, eta=3)
    assert to_confirm(result.records, schedule, RewardConfig(), 1.0, busy=set()) == []
    assert {"promoted"} <= {r.extras.get("origin") for r in result.records if r.fidelity == "full"}
    # ... and the search used the budget: it went on while a measurement still fit in it
    assert clock["now"] >= 300.0 - 20.0


# -- what users read: export and the report -----------------------------------------------


def test_export_best_picks_the_confirmed_candidate_over_a_cheaper_estimate(tmp_path: Path) -> None:
    records = [
        record(0, "fast", "short", 0.1, 20.0),  # fastest, but not measured at full
        record(1, "ok", "full", 0.5, 10.0),
        record(2, "slow", "full", 0.2, 5.0),
    ]
    source = SearchSource("s", EvalSpec(workload="digits-resnet"), records)
    assert choose_candidate(source, "best", 1.0).index == 1


def test_report_names_the_fidelity_of_every_figure(tmp_path: Path) -> None:
    records = [
        record(0, "a", "none", 20.0, 6.0),
        record(1, "a", "full", 0.4, 6.0),
        record(2, "b", "none", 30.0, 9.0),
    ]
    path = write_report(records, {"accuracy": 99.0}, tmp_path, "t", deployed="full")
    text = path.read_text()
    assert "measured after **full** recovery" in text
    assert "2 cheaper measurements (2 at none)" in text
    assert "| 1 | full | 98.60 | 0.40 |" in text
    assert "6.00x** (#1" in text  # the best is the full record, not the 9x estimate


def test_the_hand_pipelines_seeds_come_first_and_count_against_the_budget(
    tmp_path: Path, fake: FidelityExecutor, workload_cache: Path
) -> None:
    seeded = search_module.run_search(config(tmp_path, workload_cache, budget=12))
    first_level = [r for r in seeded.records if r.fidelity == "none"]
    origins = [r.extras.get("origin") for r in first_level]
    n_seeds = origins.count("seed")
    assert 0 < n_seeds <= 6 and origins[:n_seeds] == ["seed"] * n_seeds  # at most half
    assert seeded.summary["candidates"] == 12  # seeds are proposals like any other
    for record in first_level[:n_seeds]:  # one setting everywhere, nothing removed
        settings = [tuple(sorted(a.items())) for a in record.strategy.units.values()]
        assert not any(dict(s).get("skip") for s in settings)
        assert len({dict(s).get("precision") for s in settings}) == 1

    unseeded = search_module.run_search(
        config(tmp_path, workload_cache, budget=12, seeds=False, out=tmp_path / "plain")
    )
    assert all(r.extras.get("origin") != "seed" for r in unseeded.records)
