"""The MLflow record of a search, read back through MlflowClient from a temporary SQLite store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from agent import report
from agent.records import CandidateRecord
from agent.report import write_report
from agent.tracking import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    Tracker,
    artifact_root,
    default_tracking_uri,
    load_eval_spec,
    load_run,
    load_search,
    load_search_runs,
    log_export,
    param_key,
    records_from_runs,
    strategy_params,
)
from agent.tracking.keys import DOUBT_TAG
from runners.export import ExportedModel
from runners.job import Outcome
from runners.latency import LatencyStats
from runners.recovery import RecoveryConfig
from runners.result import EvalResult, Measurement
from search_spaces import Strategy

CONFIG = {"agent": "ppo", "budget": 8, "eval": {"runtime": "onnxruntime", "threads": 1}}
WORKLOAD = {"name": "digits-resnet", "num_units": 9}
BASELINE = {"accuracy": 97.5, "latency_ms": 1.25, "flops": 2.5e6, "params": 7.5e4}
STRATEGY = Strategy(
    {"*": {"precision": "int8"}, "layer1.0": {"skip": True}, "conv1": {"prune": 0.5}}
)


EVAL_SPEC = {
    "_type": "layerpilot.EvalSpec",
    "_version": 1,
    "workload": "digits-resnet",
    "model": None,
    "seed": 0,
    "cache_dir": None,
    "eval": {"runtime": "onnxruntime-cpu", "threads": 1, "latency": {"batch_size": 1}},
}


def result_data(speedup: float = 2.0, accuracy: float = 97.0, **extra: float) -> dict:
    """A measured result in its ``EvalResult.to_dict()`` shape (``extra``: action metrics)."""
    latency = BASELINE["latency_ms"] / speedup
    return {
        "workload": "digits-resnet",
        "runtime": "onnxruntime",
        "strategy": STRATEGY.to_dict(),
        "strategy_key": STRATEGY.key(),
        "accuracy": accuracy,
        "baseline_accuracy": BASELINE["accuracy"],
        "accuracy_drop": BASELINE["accuracy"] - accuracy,
        "latency_ms": latency,
        "latency_p90_ms": 1.1 * latency,
        "latency_spread": 0.01,
        "latency_stable": True,
        "latency_runs": 300,
        "baseline_latency_ms": BASELINE["latency_ms"],
        "baseline_latency_p90_ms": 1.1 * BASELINE["latency_ms"],
        "speedup": speedup,
        "speedup_source": "latency",
        "ideal_speedup": speedup * 1.5,
        "realization": 1 / 1.5,
        "flops": 1_000_000,
        "baseline_flops": 2_500_000,
        "params": 30_000,
        "baseline_params": 75_000,
        "size_bytes": 40_000,
        "baseline_size_bytes": 300_000,
        "info": {"note": "not a metric"},
        **extra,
    }


def ok_record(
    index: int, speedup: float = 2.0, accuracy: float = 97.0, **extras: object
) -> CandidateRecord:
    outcome = Outcome(
        STRATEGY,
        "ok",
        result=EvalResult.from_dict(result_data(speedup, accuracy)),
        eval_seconds=2.5,
        worker="host:1",
    )
    return CandidateRecord(index, outcome, reward=0.75, source="ppo", extras={"lam": 0.5, **extras})


def failed_record(index: int, error: str = "RuntimeError: ONNX export failed") -> CandidateRecord:
    outcome = Outcome(Strategy({"fc": {"rank": 4}}), "failed", error=error, eval_seconds=0.5)
    return CandidateRecord(index, outcome, reward=-1.0, source="random", cached=True)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite database for the module (creating its tables takes seconds)."""
    workdir = tmp_path_factory.mktemp("mlflow")
    Tracker(workdir=workdir)
    return default_tracking_uri(workdir)


@pytest.fixture
def tracker(store: str, request: pytest.FixtureRequest) -> Tracker:
    """A tracker on its own experiment, so each test sees only its runs."""
    return Tracker(store, experiment=request.node.name)


@pytest.fixture
def search(tracker: Tracker, tmp_path: Path) -> tuple[Tracker, str, list[str]]:
    """A search with two ok candidates and a failed one, finished."""
    parent = tracker.start_search("ppo-digits", CONFIG, WORKLOAD, BASELINE, tmp_path)
    run_ids = [tracker.log_candidate(r) for r in (ok_record(0), failed_record(1), ok_record(2))]
    tracker.finish_search({"hypervolume": 12.5, "candidates": 3}, "FINISHED")
    return tracker, parent, run_ids


def test_tracker_defaults_to_sqlite_in_workdir_with_runs_table_experiment(tmp_path: Path):
    tracker = Tracker(workdir=tmp_path / "work")

    experiment = tracker.client.get_experiment(tracker.experiment_id)
    assert tracker.tracking_uri == f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}"
    assert (tmp_path / "work" / "mlflow.db").is_file()
    assert experiment.name == "layerpilot"
    assert experiment.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    assert experiment.artifact_location == (tmp_path / "work" / "mlartifacts").as_uri()


def test_tracker_reuses_experiment_when_created_twice(store: str):
    first = Tracker(store, experiment="twice")
    second = Tracker(store, experiment="twice")

    assert first.experiment_id == second.experiment_id


def test_start_search_logs_config_workload_baseline_and_machine(search, tmp_path: Path):
    tracker, parent, _ = search

    run = tracker.client.get_run(parent)

    assert run.info.run_name == "ppo-digits"
    assert run.info.status == "FINISHED"
    assert run.data.params["agent"] == "ppo"
    assert run.data.params["eval.runtime"] == "onnxruntime"
    assert run.data.params["workload.num_units"] == "9"
    assert run.data.metrics["baseline_accuracy"] == 97.5
    assert run.data.metrics["baseline_latency_ms"] == 1.25
    assert run.data.metrics["hypervolume"] == 12.5
    assert run.data.tags["layerpilot.agent"] == "ppo"
    assert run.data.tags["layerpilot.workload"] == "digits-resnet"
    assert run.data.tags["layerpilot.search_dir"] == str(tmp_path.resolve())
    assert run.data.tags["machine.torch"] == torch.__version__
    assert int(run.data.tags["machine.cpu_count"]) >= 1


def test_log_candidate_nests_runs_with_strategy_params_metrics_and_artifact(search, tmp_path: Path):
    tracker, parent, run_ids = search
    client = MlflowClient(tracker.tracking_uri)  # a reader of its own, as the UI would be

    nested = client.search_runs(
        [tracker.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'"
    )
    run = client.get_run(run_ids[0])

    assert {r.info.run_id for r in nested} == set(run_ids)
    assert run.info.run_name == "cand-0000 · 2.00x · drop 0.50 · none"  # the headline figures
    assert run.info.status == "FINISHED"
    assert run.data.params == {
        "_default.precision": "int8",
        "conv1.prune": "0.5",
        "layer1.0.skip": "True",
        "units:prune": "1",  # aggregates: units per action, mean of numeric ones
        "units:prune.mean": "0.5",
        "units:skip": "1",
        "source": "ppo",
        "cached": "False",
        "extra:lam": "0.5",
    }
    assert run.data.tags["layerpilot.summary"].startswith("*: precision=int8")
    assert run.data.metrics["speedup"] == 2.0
    assert run.data.metrics["accuracy_drop"] == pytest.approx(0.5)
    assert run.data.metrics["reward"] == 0.75
    assert run.data.metrics["eval_seconds"] == 2.5
    assert run.data.metrics["size_bytes"] == 40_000
    assert "info" not in run.data.metrics
    assert "baseline_accuracy" not in run.data.metrics  # on the parent run, not each candidate
    assert run.info.end_time - run.info.start_time == 2500  # the evaluation's wall time
    assert run.data.tags["layerpilot.strategy_key"] == STRATEGY.key()
    artifact = client.download_artifacts(run_ids[0], "strategy.json", str(tmp_path))
    assert Strategy.load(artifact) == STRATEGY


def test_log_candidate_ends_failed_with_error_tag_when_outcome_failed(search):
    tracker, _, run_ids = search

    run = tracker.client.get_run(run_ids[1])

    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "RuntimeError: ONNX export failed"
    assert run.data.metrics == {"reward": -1.0, "eval_seconds": 0.5}
    assert run.data.params["cached"] == "True"


def test_a_candidate_whose_speedup_is_in_doubt_says_so_in_a_tag(tracker, tmp_path: Path):
    """Issue 18 (B.8): a speedup above the FLOP-ideal is tagged with why, so the runs table
    can show (and filter out) what a slow baseline timing flattered."""
    tracker.start_search("ppo-digits", CONFIG, WORKLOAD, BASELINE, tmp_path)
    data = {**result_data(6.0), "ideal_speedup": 2.0, "realization": 3.0}
    outcome = Outcome(STRATEGY, "ok", result=EvalResult.from_dict(data), eval_seconds=1.0)
    doubted = tracker.log_candidate(CandidateRecord(0, outcome, 0.5, "ppo"))
    plain = tracker.log_candidate(ok_record(1))
    tracker.finish_search({"candidates": 2}, "FINISHED")

    tags = tracker.client.get_run(doubted).data.tags
    assert "6.00x is 3.00x the FLOP-ideal 2.00x" in tags[DOUBT_TAG]
    assert DOUBT_TAG not in tracker.client.get_run(plain).data.tags


def test_log_candidate_truncates_error_when_longer_than_mlflow_accepts(tracker, tmp_path):
    tracker.start_search("long", CONFIG, WORKLOAD, BASELINE, tmp_path)

    run_id = tracker.log_candidate(failed_record(0, error="E" * 20_000))

    error = tracker.client.get_run(run_id).data.tags["error"]
    assert len(error) == 8000 and error.startswith("EEE") and error.endswith("[truncated]")


def test_log_candidate_raises_when_no_search_started(tracker):
    with pytest.raises(RuntimeError, match="start_search"):
        tracker.log_candidate(ok_record(0))


def test_mark_pareto_tags_exactly_the_latest_front(search):
    tracker, _, run_ids = search

    tracker.mark_pareto([run_ids[0], run_ids[1]])
    tracker.mark_pareto([run_ids[0], run_ids[2]])

    tags = [tracker.client.get_run(r).data.tags.get("pareto") for r in run_ids]
    assert tags == ["true", None, "true"]


def test_finish_search_ends_parent_killed_when_interrupted(tracker, tmp_path):
    parent = tracker.start_search("stopped", CONFIG, WORKLOAD, BASELINE, tmp_path)

    tracker.finish_search({}, "KILLED")

    assert tracker.client.get_run(parent).info.status == "KILLED"


def test_finish_search_raises_when_status_unknown(tracker, tmp_path):
    tracker.start_search("bad", CONFIG, WORKLOAD, BASELINE, tmp_path)

    with pytest.raises(ValueError, match="FINISHED, KILLED or FAILED"):
        tracker.finish_search({}, "DONE")  # type: ignore[arg-type]


def test_log_artifact_attaches_files_and_directories(search, tmp_path: Path):
    tracker, parent, _ = search
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "report.md").write_text("# report\n")
    (tmp_path / "search.json").write_text("{}")

    tracker.log_artifact(parent, tmp_path / "report")
    tracker.log_artifact(parent, tmp_path / "search.json")

    paths = {a.path for a in tracker.client.list_artifacts(parent)}
    assert {"report", "search.json"} <= paths
    assert [a.path for a in tracker.client.list_artifacts(parent, "report")] == ["report/report.md"]


def test_log_best_model_logs_loadable_model_linked_to_run(search):
    import mlflow.pytorch
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    tracker, _, run_ids = search
    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    example = torch.randn(2, 8)

    uri = tracker.log_best_model(run_ids[0], model, example)

    logged = tracker.client.get_logged_model(uri.removeprefix("models:/"))
    assert logged.name == "model"
    assert logged.source_run_id == run_ids[0]
    assert logged.experiment_id == tracker.experiment_id
    with _use_tracking_uri(tracker.tracking_uri):
        loaded = mlflow.pytorch.load_model(uri)
    assert torch.allclose(loaded(example), model(example))


def test_load_search_runs_returns_candidates_in_order_with_strategy(search):
    tracker, parent, run_ids = search

    runs = load_search_runs(tracker.tracking_uri, parent)

    assert [r["run_id"] for r in runs] == run_ids
    assert [r["status"] for r in runs] == ["FINISHED", "FAILED", "FINISHED"]
    assert Strategy.from_dict(runs[0]["strategy"]) == STRATEGY
    assert runs[1]["tags"]["error"] == "RuntimeError: ONNX export failed"
    assert load_run(tracker.tracking_uri, parent)["tags"]["layerpilot.kind"] == "search"


def test_load_search_returns_runs_and_baseline_enough_for_a_report(search, tmp_path: Path):
    tracker, parent, run_ids = search

    runs, baseline = load_search(tracker.tracking_uri, parent)
    report = write_report(records_from_runs(runs), baseline, tmp_path, title="from MLflow")

    assert [r["run_id"] for r in runs] == run_ids
    assert baseline == BASELINE
    assert "| candidates | 2 strategies, 3 measurements (1 cached) |" in report.read_text()


def test_records_from_runs_match_logged_records_when_rebuilt_from_mlflow(search):
    tracker, parent, _ = search
    logged = [ok_record(0), failed_record(1), ok_record(2)]

    rebuilt = records_from_runs(load_search_runs(tracker.tracking_uri, parent))
    from_params = records_from_runs(
        load_search_runs(tracker.tracking_uri, parent, with_strategy=False)
    )

    for got, want in zip(rebuilt, logged, strict=True):
        assert (got.index, got.ok, got.source, got.cached) == (
            want.index,
            want.ok,
            want.source,
            want.cached,
        )
        assert got.strategy == want.strategy
        assert got.reward == want.reward
        assert got.outcome.error == want.outcome.error
        assert got.speedup == want.speedup or not want.ok
    assert [r.strategy for r in from_params] == [r.strategy for r in logged]


def test_param_key_replaces_characters_mlflow_refuses():
    assert param_key("layer1.0.conv1.prune") == "layer1.0.conv1.prune"
    assert param_key("blocks[0]*x") == "blocks_0__x"
    assert param_key("a//b") == "a__b"
    assert param_key("../up") == "_.._up"


def test_strategy_params_truncates_values_over_mlflow_limit():
    strategy = {"units": {"*": {"precision": "int8"}, "fc": {"note": "x" * 7000}}}

    params = strategy_params(strategy)

    assert params["_default.precision"] == "int8"
    assert len(params["fc.note"]) == 6000


def test_artifact_root_is_beside_sqlite_database_and_none_for_servers():
    assert artifact_root("sqlite:////data/runs/mlflow.db") == Path("/data/runs/mlartifacts")
    assert artifact_root("http://127.0.0.1:5000") is None


def test_records_from_runs_is_reexported_by_report():
    assert report.records_from_runs is records_from_runs


def test_start_search_saves_eval_spec_that_load_eval_spec_reads_back(tracker, tmp_path: Path):
    parent = tracker.start_search(
        "with-spec", CONFIG, WORKLOAD, BASELINE, tmp_path, eval_spec=EVAL_SPEC
    )
    candidate = tracker.log_candidate(ok_record(0))

    assert load_eval_spec(tracker.tracking_uri, parent) == EVAL_SPEC
    assert load_eval_spec(tracker.tracking_uri, candidate) == EVAL_SPEC  # followed to its parent


def test_load_eval_spec_is_none_when_search_logged_without_one(search):
    tracker, parent, run_ids = search

    assert load_eval_spec(tracker.tracking_uri, parent) is None
    assert load_eval_spec(tracker.tracking_uri, run_ids[0]) is None


def test_log_candidate_logs_result_metrics_with_action_metrics_and_result_artifact(
    tracker, tmp_path: Path
):
    tracker.start_search("actions", CONFIG, WORKLOAD, BASELINE, tmp_path)
    data = result_data(executed_share=0.5)
    outcome = Outcome(STRATEGY, "ok", result=EvalResult.from_dict(data), eval_seconds=1.0)

    run_id = tracker.log_candidate(CandidateRecord(0, outcome, reward=0.2, source="ppo"))

    metrics = tracker.client.get_run(run_id).data.metrics
    assert metrics["executed_share"] == 0.5
    assert {"accuracy", "speedup", "latency_ms", "flops", "reward"} <= set(metrics)
    runs = load_search_runs(tracker.tracking_uri, tracker.parent_run_id)
    assert runs[0]["result"]["executed_share"] == 0.5
    assert runs[0]["result"]["info"] == {"note": "not a metric"}


def test_records_round_trip_through_mlflow_exactly_when_result_artifact_logged(
    tracker, tmp_path: Path
):
    parent = tracker.start_search("round-trip", CONFIG, WORKLOAD, BASELINE, tmp_path)
    dynamic = Outcome(
        STRATEGY,
        "ok",
        result=EvalResult.from_dict(result_data(1.6, 96.0, executed_share=0.44, gated_blocks=3)),
        eval_seconds=3.25,
        worker="host:7",
        node="node-a",
        attempts=2,
    )
    logged = [
        ok_record(0, origin="policy", predicted_reward=0.25),
        failed_record(1),
        CandidateRecord(2, dynamic, reward=-0.125, source="tpe", cached=True),
    ]
    for record in logged:
        tracker.log_candidate(record)

    rebuilt = records_from_runs(load_search_runs(tracker.tracking_uri, parent))

    for got, want in zip(rebuilt, logged, strict=True):
        assert got.strategy == want.strategy
        assert (got.accuracy, got.speedup, got.accuracy_drop) == (
            pytest.approx(want.accuracy, nan_ok=True),
            pytest.approx(want.speedup, nan_ok=True),
            pytest.approx(want.accuracy_drop, nan_ok=True),
        )
        assert (got.reward, got.source, got.cached, got.extras) == (
            want.reward,
            want.source,
            want.cached,
            want.extras,
        )
        assert got.outcome.result == want.outcome.result  # action metrics, info: all of it
        assert got == want
    assert rebuilt[2].outcome.metric("executed_share") == 0.44


def test_records_from_runs_rebuild_from_metrics_when_run_has_no_result_artifact(search):
    tracker, parent, _ = search  # as a run logged before result.json reads

    old = records_from_runs(load_search_runs(tracker.tracking_uri, parent, with_result=False))

    assert [r.ok for r in old] == [True, False, True]
    assert (old[0].accuracy, old[0].speedup, old[0].reward) == (97.0, 2.0, 0.75)
    assert old[0].outcome.metric("size_bytes") == 40_000
    assert old[0].extras == {"lam": 0.5}


def test_log_best_model_saves_torch_export_with_a_free_batch_axis(search):
    import mlflow.pytorch
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    tracker, _, run_ids = search
    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))

    uri = tracker.log_best_model(run_ids[2], model, torch.randn(1, 8))  # a batch-1 example

    tags = tracker.client.get_run(run_ids[2]).data.tags
    assert tags["layerpilot.torch_serialization"] == "pt2"
    with _use_tracking_uri(tracker.tracking_uri):
        loaded = mlflow.pytorch.load_model(uri)
    x = torch.randn(5, 8)
    assert torch.allclose(loaded(x), model(x))


class _DataDependent(torch.nn.Module):
    """Branches on its input's values, as dynamic skip does: torch.export cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.fc(x)
        return -self.fc(x)


def test_log_best_model_logs_the_onnx_form_never_a_pickle_when_the_model_does_not_trace(search):
    """Issue 18 (A): one model policy without pickle. A model ``torch.export`` cannot trace is
    logged as its ONNX graph (what layerpilot measures), loadable without layerpilot."""
    import mlflow.onnx
    import onnxruntime as ort
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    tracker, _, run_ids = search
    model = _DataDependent()
    example = torch.rand(2, 8) + 0.1  # the branch the ONNX trace follows

    uri = tracker.log_best_model(run_ids[0], model, example)

    tags = tracker.client.get_run(run_ids[0]).data.tags
    assert tags["layerpilot.torch_serialization"] == "onnx"
    assert tracker.client.get_logged_model(uri.removeprefix("models:/")).status == "READY"
    models = tracker.client.search_logged_models(
        [tracker.experiment_id], filter_string=f"source_run_id = '{run_ids[0]}'"
    )
    assert [m.model_id for m in models] == [uri.removeprefix("models:/")]  # the failed try: gone
    with _use_tracking_uri(tracker.tracking_uri):
        proto = mlflow.onnx.load_model(uri)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: example.numpy()})
    assert torch.allclose(torch.from_numpy(out), model(example).detach(), atol=1e-5)


def _torch_export(out: Path) -> ExportedModel:
    """A ``torch``-format export of a tiny model, as :func:`log_export` is handed it."""
    out.mkdir()
    (out / "report.md").write_text("# export\n")
    STRATEGY.save(out / "strategy.json")
    (out / "export.json").write_text("{}")
    (out / "model.pt").write_bytes(b"")
    measured = Measurement(
        accuracy=97.0,
        latency=LatencyStats.not_timed(),
        flops=1_000,
        weighted_flops=1_000.0,
        params=10,
        size_bytes=100,
        info={},
    )
    return ExportedModel(
        format="torch",
        out=out,
        files={"model": "model.pt", "strategy": "strategy.json", "report": "report.md"},
        strategy=STRATEGY,
        runtime="torch-cpu",
        candidate=measured,
        baseline=measured,
        recovery=RecoveryConfig(steps=0),
        source={"workload": "digits-resnet", "candidate": 3},
    )


def test_log_export_logs_torch_model_by_the_same_policy_as_the_best_model(
    store: str, tmp_path: Path
):
    import mlflow.pytorch
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    model = torch.nn.Sequential(torch.nn.Linear(8, 3))

    logged = log_export(
        _torch_export(tmp_path / "out"),
        tracking_uri=store,
        experiment="export-policy",
        register="tiny-torch",
        example_input=torch.randn(1, 8),
        torch_model=model,
    )

    run = MlflowClient(store).get_run(logged["run_id"])
    assert run.data.tags["layerpilot.kind"] == "export"
    assert run.data.tags["layerpilot.torch_serialization"] == "pt2"
    assert run.data.params["extra:source.candidate"] == "3"
    assert logged["model_version"] == "1"
    with _use_tracking_uri(store):
        loaded = mlflow.pytorch.load_model(logged["model_uri"])
    x = torch.randn(4, 8)
    assert torch.allclose(loaded(x), model(x))


def test_log_export_raises_before_logging_when_torch_export_has_no_model(
    store: str, tmp_path: Path
):
    with pytest.raises(ValueError, match="torch_model="):
        log_export(_torch_export(tmp_path / "out"), tracking_uri=store, experiment="no-model")

    assert MlflowClient(store).get_experiment_by_name("no-model") is None


def _open_tracker(uri: str, barrier) -> str:  # type: ignore[no-untyped-def]
    from agent.tracking import Tracker

    barrier.wait()  # every process opens the fresh store at the same moment
    return Tracker(uri, "race").experiment_id


def test_searches_started_at_once_on_a_fresh_sqlite_store_all_open_it(tmp_path: Path) -> None:
    import multiprocessing

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        barrier = manager.Barrier(3)
        with context.Pool(3) as pool:
            ids = pool.starmap(_open_tracker, [(uri, barrier)] * 3)

    assert len(set(ids)) == 1  # one schema, one experiment, three searches in it


def test_the_saved_view_opens_on_a_speedup_accuracy_chart_of_the_candidates(tracker, tmp_path):
    """Issue 18 (A): the chart view showed the parent's bookkeeping metrics. The saved view
    carries a scatter of accuracy against speedup (and drop against latency), in its own
    section, over metrics every candidate run logs."""
    parent = tracker.start_search("ppo-digits", CONFIG, WORKLOAD, BASELINE, tmp_path)
    run_ids = [tracker.log_candidate(ok_record(0))]
    tracker.save_view(1.0, "none")
    tracker.finish_search({"candidates": 1}, "FINISHED")

    tags = tracker.client.get_experiment(tracker.experiment_id).tags
    view = json.loads(tags[f"mlflow.sharedViewState.{parent}"])
    (section,) = view["compareRunSections"]
    charts = view["compareRunCharts"]
    assert {c["type"] for c in charts} == {"SCATTER"}
    assert all(c["metricSectionId"] == section["uuid"] and not c["deleted"] for c in charts)
    axes = [(c["xaxis"]["key"], c["yaxis"]["key"]) for c in charts]
    assert ("speedup", "accuracy") in axes
    logged = tracker.client.get_run(run_ids[0]).data.metrics
    assert all(x in logged and y in logged for x, y in axes)
