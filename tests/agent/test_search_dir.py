"""`SearchDir`: search.json, candidates.jsonl and the EvalSpec round-trip, and a directory made
before this layout (tests/agent/data/old_search: 3 candidates of a 20-candidate random search
run with the code of 2914d1c) still loads through it, the report and export."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from agent.config import SearchConfig, config_from_dict, eval_spec
from agent.records import CandidateRecord
from agent.report import load_records
from agent.search_dir import (
    DamagedRecordWarning,
    SearchDir,
    SearchDirError,
    SearchState,
    TrackingIds,
)
from runners.job import EvalSpec, Outcome
from search_spaces import Strategy

OLD = Path(__file__).parent / "data" / "old_search"
PRUNE = Strategy({"layer3.1.conv1": {"prune": 0.5}})


def _record(index: int, strategy: Strategy = PRUNE, ok: bool = True) -> CandidateRecord:
    if ok:
        result = {"accuracy": 99.0, "accuracy_drop": 0.5, "speedup": 1.3, "latency_ms": 1.0}
        outcome = Outcome(strategy, "ok", result=result)
    else:
        outcome = Outcome(strategy, "failed", error="RuntimeError: boom")
    return CandidateRecord(index=index, outcome=outcome, reward=0.25, source="test")


def _spec() -> EvalSpec:
    # everything a default spec would get wrong: BN batches, threads, no timing, recovery
    return eval_spec(
        SearchConfig(bn_batches=16, threads=2, batch_size=4, measure="flops", fidelities=("short",))
    )


def test_state_round_trips_through_search_json(tmp_path: Path) -> None:
    sdir = SearchDir(tmp_path / "s")
    state = SearchState(
        config=json.loads(SearchConfig(budget=5).to_json()),
        status="KILLED",
        mlflow=TrackingIds("sqlite:///x.db", "3", "abc"),
        eval_spec=_spec(),
        baseline={"accuracy": 99.5, "latency_ms": 2.0},
        summary={"candidates": 2, "best_speedup_at_1pt": math.nan},
        runs={"0": "r0", "1": "r1"},
        resumed=("2025-01-01T00:00:00",),
        extra={"written_by_a_newer_layerpilot": [1, 2]},
    )

    sdir.write_state(state)
    again = sdir.read_state()

    assert again.summary["best_speedup_at_1pt"] is None  # type: ignore[index]  # strict JSON
    nan_free = {"candidates": 2, "best_speedup_at_1pt": None}
    assert replace(again, summary=nan_free) == replace(state, summary=nan_free)
    assert again.parent_run_id == "abc"
    assert again.search_config() == SearchConfig(budget=5)
    data = json.loads(sdir.state_path.read_text())
    assert data["eval_spec"]["_type"] == "layerpilot.EvalSpec"
    assert data["written_by_a_newer_layerpilot"] == [1, 2]  # a rewrite loses nothing unknown
    assert not list(sdir.path.glob("*.tmp"))  # written by replace, never half-written


def test_state_before_tracking_writes_the_old_keys(tmp_path: Path) -> None:
    sdir = SearchDir(tmp_path / "s")

    sdir.write_state(SearchState(config={"workload": "digits-resnet"}))

    assert json.loads(sdir.state_path.read_text()) == {
        "config": {"workload": "digits-resnet"},
        "mlflow": None,
        "status": "RUNNING",
    }


def test_eval_spec_is_read_back_as_persisted(tmp_path: Path) -> None:
    sdir = SearchDir(tmp_path / "s")
    # the config says otherwise: the persisted spec wins
    sdir.write_state(SearchState(config=SearchConfig().to_dict(), eval_spec=_spec()))

    spec = sdir.eval_spec()

    assert spec == _spec()
    assert spec.eval.build.bn_batches == 16 and spec.eval.time_latency is False


def test_records_are_appended_fsynced_and_read_back(tmp_path: Path) -> None:
    sdir = SearchDir(tmp_path / "s")
    records = [_record(0), _record(1, Strategy(), ok=False)]

    with sdir.candidate_log() as log:
        for record in records:
            log.append(record)

    assert sdir.records() == records
    assert load_records(sdir.path) == records  # the report's reader is the same one


def test_candidate_log_trims_a_torn_last_line_before_appending(tmp_path: Path) -> None:
    sdir = SearchDir(tmp_path / "s")
    with sdir.candidate_log() as log:
        log.append(_record(0))
    with sdir.candidates_path.open("a") as f:
        f.write(json.dumps(_record(1).to_dict())[:40])  # killed mid-append

    assert sdir.records() == [_record(0)]  # a torn last line is skipped on read
    with sdir.candidate_log() as log:
        log.append(_record(1))

    assert sdir.records() == [_record(0), _record(1)]


def test_a_corrupt_middle_record_is_skipped_naming_its_line_and_the_rest_kept(
    tmp_path: Path,
) -> None:
    sdir = SearchDir(tmp_path)
    first, second = (json.dumps(_record(i).to_dict()) for i in range(2))
    sdir.candidates_path.write_text(f"{first}\n{{not json\n[]\n{second}\n")

    with pytest.warns(DamagedRecordWarning, match=r"candidates\.jsonl:2") as caught:
        records = sdir.records()

    assert records == [_record(0), _record(1)]
    assert any("candidates.jsonl:3" in str(w.message) for w in caught)


def test_a_search_without_candidates_yet_has_none(tmp_path: Path) -> None:
    sdir = SearchDir(tmp_path)
    sdir.write_state(SearchState(config={}))

    assert sdir.records() == []


def test_a_plain_folder_is_not_a_search_directory(tmp_path: Path) -> None:
    with pytest.raises(SearchDirError, match="not a search directory"):
        SearchDir(tmp_path).read_state()


def test_unreadable_search_json_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "search.json").write_text('{"config": {}, "status": "DANCING"}')

    with pytest.raises(SearchDirError, match=r"search\.json is unreadable .*DANCING"):
        SearchDir(tmp_path).read_state()


# ---- a directory written by the code before this change


@pytest.mark.usefixtures("eight_bit_int8")  # the old search ran with 8-bit int8 weights
def test_old_directory_loads_with_the_spec_its_config_implies() -> None:
    sdir = SearchDir(OLD)

    state = sdir.read_state()
    spec = sdir.eval_spec(state)

    assert state.eval_spec is None and state.status == "FINISHED"
    assert state.parent_run_id == "bd2ee409a3ed4b2d87211670be535c1f"
    assert state.baseline is not None and state.baseline["accuracy"] > 99
    assert spec == eval_spec(config_from_dict(state.config))
    assert spec.eval.build.bn_batches == 8 and spec.eval.time_latency is True
    # the derived spec is the one the old search measured with: its cache lines are in scope
    assert len(sdir.cache(spec.cache_scope()).outcomes()) == 3


def test_old_directory_records_load_through_search_dir_and_report() -> None:
    records = SearchDir(OLD).records()

    assert [r.index for r in records] == [0, 1, 2]
    assert all(r.ok and r.source == "random" for r in records)
    assert all(math.isfinite(r.accuracy) and r.speedup > 0 for r in records)
    assert load_records(OLD) == records


def test_old_directory_is_a_source_for_export() -> None:
    from agent.export import load_source

    source = load_source(str(OLD))

    assert source.spec == SearchDir(OLD).eval_spec()
    assert [r.index for r in source.records] == [0, 1, 2]
    assert source.parent_run_id == "bd2ee409a3ed4b2d87211670be535c1f"
    assert source.tracking_uri == "sqlite:////work/oldrun/mlflow.db"
    assert source.search_dir == OLD


def test_old_directory_reports_through_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.cli import main

    target = tmp_path / "old"
    shutil.copytree(OLD, target)

    assert main(["report", str(target)]) == 0

    assert "layerpilot search old" in capsys.readouterr().out
    assert (target / "report" / "report.md").exists()
    assert (target / "report" / "pareto.png").exists()


def test_old_directory_resumes_with_its_config(tmp_path: Path) -> None:
    from agent.resume import reopen, resume_state

    target = tmp_path / "old"
    shutil.copytree(OLD, target)
    config, _ = resume_state(target)

    reopened = reopen(config.with_overrides(budget=5))

    assert reopened.state.status == "RUNNING" and len(reopened.state.resumed) == 1
    assert reopened.state.eval_spec == SearchDir(OLD).eval_spec()  # upgraded on the next write
    assert len(reopened.records) == 3


# ---- export reads the persisted spec, not a rebuilt one


def test_export_source_reads_the_persisted_spec(tmp_path: Path) -> None:
    from agent.export import load_source

    sdir = SearchDir(tmp_path / "s")
    sdir.write_state(SearchState(config=SearchConfig().to_dict(), eval_spec=_spec()))
    with sdir.candidate_log() as log:
        log.append(_record(0))

    source = load_source(str(sdir.path))

    assert source.spec == _spec()  # bn_batches 16, not the default 8


def test_export_prepare_measures_like_the_search_but_always_times(
    tmp_path: Path, workload_cache: Path
) -> None:
    from agent.export import SearchSource, prepare

    spec = replace(_spec(), cache_dir=workload_cache)
    source = SearchSource(label="s", spec=spec, records=[_record(0)])

    subject, config = prepare(source)

    assert config == replace(spec.eval, time_latency=True)
    assert subject.workload.name == "digits-resnet"


def test_export_source_of_an_mlflow_run_reads_its_logged_spec(tmp_path: Path) -> None:
    from agent.export import load_source
    from agent.tracking import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri)
    parent = tracker.start_search(
        "s", SearchConfig().to_dict(), {"name": "digits-resnet"}, {}, tmp_path,
        eval_spec=_spec().to_dict(),
    )  # fmt: skip
    candidate = tracker.log_candidate(_record(0))

    by_parent = load_source(parent, uri)
    by_candidate = load_source(candidate, uri)

    assert by_parent.spec == _spec() == by_candidate.spec
    assert by_candidate.default_candidate == 0 and by_candidate.parent_run_id == parent


def test_export_source_of_an_old_mlflow_run_parses_its_params() -> None:
    from agent.export import spec_from_params

    params = {
        "workload": "digits-resnet",
        "model": "None",
        "seed": "3",
        "threads": "2",
        "batch_size": "4",
        "bn_batches": "16",
        "latency.warmup": "3",
        "latency.max_seconds": "5.0",
        "latency.batch_size": "4",
    }

    spec = spec_from_params(params)

    assert (spec.workload, spec.model, spec.seed) == ("digits-resnet", None, 3)
    assert spec.eval.threads == 2 and spec.eval.build.bn_batches == 16
    assert spec.eval.latency.warmup == 3 and spec.eval.latency.max_seconds == 5.0
    assert spec.eval.latency.batch_size == 4


def test_search_json_is_strict_json_with_nan_as_null(tmp_path: Path) -> None:
    sdir = SearchDir(tmp_path)
    sdir.write_state(SearchState(config={}, summary={"best_speedup_at_1pt": float("nan")}))

    def refuse(constant: str) -> None:
        raise AssertionError(f"bare {constant} in search.json")

    data = json.loads(sdir.state_path.read_text(), parse_constant=refuse)
    assert data["summary"]["best_speedup_at_1pt"] is None


def _resume_args(tmp_path: Path, *flags: str):  # type: ignore[no-untyped-def]
    from agent.cli import build_parser
    from agent.config import SearchConfig

    out = tmp_path / "s"
    config = SearchConfig(out=out, tracking_uri=f"sqlite:///{tmp_path / 'm.db'}", seed=3)
    ids = TrackingIds(config.tracking_uri or "", "1", "parent")
    SearchDir(out).write_state(SearchState(config=config.to_dict(), status="KILLED", mlflow=ids))
    return build_parser().parse_args(["search", "--resume", str(out), *flags])


@pytest.mark.parametrize(
    ("flags", "refused"),
    [(("--lam", "0"), "--lam"), (("--max-drop", "0"), "--max-drop"), (("--seed", "0"), "--seed")],
)
def test_resume_refuses_a_zero_that_would_change_the_search(
    tmp_path: Path, flags: tuple[str, ...], refused: str
) -> None:
    from agent.cli.errors import CliError
    from agent.cli.search import resume_config

    with pytest.raises(CliError, match=f"{refused} cannot change it"):
        resume_config(_resume_args(tmp_path, *flags))


def test_resume_accepts_a_flag_equal_to_the_recorded_value(tmp_path: Path) -> None:
    from agent.cli.search import resume_config

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    config = resume_config(_resume_args(tmp_path, "--tracking-uri", uri, "--seed", "3"))

    assert config.tracking_uri == uri and config.seed == 3
