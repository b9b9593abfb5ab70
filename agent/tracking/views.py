"""The saved runs view of a search: what ``layerpilot ui`` opens on (MLflow 3 shared view state).

An MLflow 3 shared view is an experiment tag ``mlflow.sharedViewState.<key>`` holding the runs
page's UI state as JSON, opened with ``#/experiments/<id>/runs?viewStateShareKey=<key>``. The key
names below are those MLflow 3.17's UI reads (its ``ExperimentPageUIState`` and
``RunsChartsCardConfig`` classes); `agent.tracking.writer.Tracker.save_view` writes it.
"""

from __future__ import annotations

import json
from typing import Any

from agent.tracking.keys import FIDELITY_TAG, PARENT_RUN_TAG, PARETO_TAG, SUMMARY_TAG

VIEW_COLUMNS = (
    ("metrics", "speedup"),
    ("metrics", "accuracy"),
    ("metrics", "accuracy_drop"),
    ("metrics", "latency_ms"),
    ("tags", FIDELITY_TAG),
    ("tags", PARETO_TAG),
    ("tags", SUMMARY_TAG),
)
"""The runs-table columns of the saved view (``type.`key```, as the MLflow UI names them)."""


def runs_view_state(parent_run_id: str, bound: float, deployed: str) -> str:
    """The JSON of a saved runs-table view: the search's candidates measured at the ``deployed``
    fidelity within ``bound`` points, fastest first (the search facets ``searchFilter`` /
    ``orderByKey`` / ``orderByAsc``), the headline columns and every run shown (the UI state;
    key names as MLflow 3.17's UI reads them)."""
    return json.dumps(
        {
            "searchFilter": (
                f"tags.`{PARENT_RUN_TAG}` = '{parent_run_id}' and "
                f"tags.`{FIDELITY_TAG}` = '{deployed}' and metrics.accuracy_drop <= {bound:g}"
            ),
            "orderByKey": "metrics.`speedup`",
            "orderByAsc": False,
            "selectedColumns": [f"{kind}.`{key}`" for kind, key in VIEW_COLUMNS],
            "runsExpanded": {parent_run_id: True},
            "runsHiddenMode": "SHOW_ALL",
            "compareRunSections": [VIEW_SECTION],
            "compareRunCharts": list(VIEW_CHARTS),
            "isAccordionReordered": True,  # our section first, MLflow's generated ones after
        }
    )


VIEW_SECTION = {
    "uuid": "layerpilot",
    "name": "layerpilot: speed vs accuracy",
    "display": True,
    "isReordered": False,
    "deleted": False,
    "isGenerated": False,
}
"""The chart section the saved view opens with (MLflow 3.17's ``compareRunSections`` entry)."""


def _scatter(uuid: str, title: str, x: str, y: str) -> dict[str, Any]:
    """A scatter card as the UI's ``RunsChartsScatterCardConfig`` serialises it."""
    return {
        "uuid": uuid,
        "type": "SCATTER",
        "displayName": title,
        "metricSectionId": VIEW_SECTION["uuid"],
        "runsCountToCompare": 500,
        "deleted": False,
        "isGenerated": False,
        "xaxis": {"key": x, "type": "METRIC"},
        "yaxis": {"key": y, "type": "METRIC"},
    }


VIEW_CHARTS = (
    _scatter("layerpilot-speedup-accuracy", "accuracy vs speedup", "speedup", "accuracy"),
    _scatter("layerpilot-latency-drop", "drop vs latency (ms)", "latency_ms", "accuracy_drop"),
)
"""The charts of the saved view: every candidate it shows, as in ``report.md``'s plot."""


__all__ = ["VIEW_CHARTS", "VIEW_COLUMNS", "VIEW_SECTION", "runs_view_state"]
