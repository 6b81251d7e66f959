"""What the MLflow UI shows: run names, flat method params, headline metrics, per-table runs, saved views.

`declip.tracking` records the runs; this module decides how they read in `mlflow ui`, so that comparing
two ablation variants needs no knowledge of our tag names: the runs are named by what they are, the
settings a variant changes are flat params, each evaluation's headline numbers are top-level metrics
(the same numbers as results/tables/), and saved views open the comparison with those columns shown.
No mlflow import here: callers pass the client.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

# MLflow 3's experiment kind, read by the UI to open an experiment on its runs table rather than the
# GenAI overview (mlflow/server/js/src/experiment-tracking/constants.ts, ExperimentKind).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# MLflow 3.10+ replaced that per-experiment choice with a global "GenAI | Model training" switch; links
# carry it as this URL parameter (server/js/src/common/contexts/WorkflowTypeContext.tsx).
WORKFLOW_PARAM = "workflowType=machine_learning"
# Saved views are experiment tags <prefix><id>, opened by ?viewStateShareKey=<id>
# (experiment-page/utils/savedViewEnvelope.ts, hooks/useSharedExperimentViewState.ts).
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
NOTE_TAG = "mlflow.note.content"  # an experiment's (or run's) description, Markdown
SEP = " · "
BY_NAME = "tags.`mlflow.runName`"  # the runs table's sort key of the Run Name column
RUN_NAME_COLUMN = "attributes.`Run Name`"  # and its column id

# Rules whose runs get the variant's resolved `method` as flat params (what differs between variants).
METHOD_RULES = ("distill", "evaluate_regionclf", "evaluate_tfseg", "evaluate_ov3d")
# Headline numbers per evaluation rule: top-level metric name -> dotted path in the rule's metrics.json.
# Region classification: the paper's columns are thing/stuff top-1 of the `rois` classifier
# (declip.tables.registry._region_refs); tfseg and ov3d already write theirs at the top level.
HEADLINES = {
    "evaluate_regionclf": {"thing_top1": "rois.thing_top1", "stuff_top1": "rois.stuff_top1"},
    "evaluate_tfseg": {"mIoU": "mIoU"},
    "evaluate_ov3d": {"AP": "AP", "AP50": "AP50", "AP25": "AP25"},
}
TABLE_RULES = ("tables", "table2")


def wildcards(job: dict) -> dict[str, str]:
    """The job's wildcards, from its key `rule:k=v:k=v` (declip.config.job_spec)."""
    _, *parts = job.get("job_key", "").split(":")
    return dict(p.split("=", 1) for p in parts if "=" in p)


def run_name(job: dict) -> str:
    """`distill · no_sdgsc`, `regionclf · declip · mini2d_val`, `ov3d · declip · openmask3d · dense`."""
    rule = job.get("rule", "")
    w = wildcards(job)
    parts = [rule.removeprefix("evaluate_")]
    if w.get("variant"):
        parts.append(w.pop("variant"))
    parts += [w[k] for k in sorted(w)]
    if len(parts) == 1 and job.get("dataset"):
        parts.append(job["dataset"])  # e.g. `teachers · mini2d` when the dataset is not a wildcard
    return SEP.join(parts)


def method_params(job: dict) -> dict:
    """The variant's resolved method settings under their own names (`lambda_context`, `sd_gsc`, ...)."""
    if job.get("rule") not in METHOD_RULES:
        return {}
    return dict(job.get("config", {}).get("method", {}))


def headline_metrics(rule: str, metrics: dict[str, float]) -> dict[str, float]:
    """Stable top-level names for an evaluation's headline numbers, taken from its flattened metrics."""
    return {name: metrics[path] for name, path in HEADLINES.get(rule, {}).items() if path in metrics}


def table_files(outputs: list[str]) -> dict[str, list[Path]]:
    """Table id -> its CSV and Markdown among a tables job's outputs (files are named after the table)."""
    from declip.tables.registry import TABLES

    out: dict[str, list[Path]] = {}
    for path in dict.fromkeys(Path(p).absolute() for p in outputs):  # outputs and returned artifacts overlap
        if path.stem in TABLES and path.suffix in (".csv", ".md"):
            out.setdefault(path.stem, []).append(path)
    return out


def table_figures(table_id: str, cfg: dict) -> list[Path]:
    """PNG figures of the variants a 2D table shows (results/figures/<variant>/, drawn on the region
    classification dataset); 3D tables have none."""
    from declip.tables.registry import OV3D, get_table, select_rows

    spec = get_table(table_id)
    if spec.family == OV3D:
        return []
    shown = select_rows(spec.rows, list(cfg.get("variants", [])))
    drawn = cfg.get("tables", {}).get("figure_variants", [])
    root = Path(cfg.get("paths", {}).get("results", "results")) / "figures"
    return [p for v in shown if v in drawn for p in sorted((root / v).glob("*.png"))]


def table_description(table_id: str) -> str:
    from declip.tables.registry import get_table

    spec = get_table(table_id)
    return "\n\n".join([spec.title, *spec.notes])


def _column(kind: str, key: str) -> str:
    # The runs table's column ids: <metrics|params|tags|attributes>.`<key>`
    return f"{kind}.`{key}`"


def varied_settings(config: dict) -> list[str]:
    """Method keys some configured variant changes: the params worth a column."""
    keys: list[str] = []
    for v in config.get("variants", []):
        for k in config.get("variant_presets", {}).get(v, {}):
            if k not in keys:
                keys.append(k)
    return keys


def views(config: dict) -> dict[str, dict]:
    """Saved views: id -> (name, search filter, sort metric, columns). One per evaluation family, one for
    the distillation runs and one for the tables."""
    settings = [_column("params", k) for k in varied_settings(config)]
    out = {}
    for rule, heads in HEADLINES.items():
        family = rule.removeprefix("evaluate_")
        first = next(iter(heads))
        out[f"declip-{family}"] = {
            "name": f"Ablations: {family} (variants, settings, {', '.join(heads)})",
            "searchFilter": f"tags.`declip.rule` = '{rule}'",
            "orderByKey": _column("metrics", first),
            "columns": [_column("metrics", h) for h in heads] + settings,
        }
    out["declip-distill"] = {
        "name": "Ablations: distillation (variants, settings, final losses)",
        "searchFilter": "tags.`declip.rule` = 'distill'",
        "orderByKey": BY_NAME,
        "columns": [_column("metrics", "train/loss"), _column("metrics", "job_seconds")] + settings,
    }
    out["declip-tables"] = {
        "name": "Tables (CSV, Markdown and figures as artifacts)",
        "searchFilter": "tags.`declip.rule` LIKE 'table%'",
        "orderByKey": BY_NAME,
        "columns": [_column("attributes", "Description")],
    }
    return out


def description(experiment_id: str, config: dict) -> str:
    """The experiment's description (Markdown, shown above its runs table): one link per saved view.
    MLflow's runs table shows no metric or param column on a browser's first visit (the columns are the
    browser's own choice, kept in its local storage), so these links are the one click to the comparison."""
    links = " · ".join(f"[{view['name'].split(' (')[0].removeprefix('Ablations: ')}]({view_path(experiment_id, key)})"
                       for key, view in views(config).items())
    return (f"**Compare the ablation variants** (their settings and headline metrics as columns): {links}\n\n"
            "Every job of every `snakemake` run is one run here, named by what it is (`distill · no_sdgsc`, "
            "`regionclf · declip · mini2d_val`); the tables are the runs named by their table id.")


def view_tag_value(view: dict, now_ms: int | None = None) -> str:
    """A saved view as the UI stores it: an envelope {name, createdAt, state} whose `state` is the
    view's JSON (the UI accepts it uncompressed); the state's fields are repeated at the top level for
    MLflow releases that read a shared view's JSON directly (before saved views had names)."""
    state = {
        "searchFilter": view["searchFilter"],
        "orderByKey": view["orderByKey"],
        "orderByAsc": view["orderByKey"] == BY_NAME,  # names A-Z, metrics best first
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "datasetsFilter": [],
        "modelVersionFilter": "All Runs",
        "selectedColumns": view["columns"],
        # The UI applies widths through the column order: the name in full, then the columns as listed.
        "columnOrder": [RUN_NAME_COLUMN, *view["columns"]],
        "columnWidths": {RUN_NAME_COLUMN: 300},
        "compareRunsMode": "TABLE",
        "runsHiddenMode": "SHOW_ALL",
        # MLflow <=3.9 replaces the page's whole UI state by a shared view's (no merge with defaults; a
        # missing field crashes the page): its defaults, experiment-page-ui-state.ts in mlflow/server/js.
        "runsExpanded": {}, "runsPinned": [], "runsHidden": [], "runsVisibilityMap": {},
        "viewMaximized": False, "runListHidden": False, "isAccordionReordered": False, "groupBy": None,
        "groupsExpanded": {}, "autoRefreshEnabled": True, "useGroupedValuesInCharts": True, "hideEmptyCharts": True,
        "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0, "selectedXAxisMetricKey": ""},
        "chartsSearchFilter": "",
    }
    created = int(time.time() * 1000) if now_ms is None else now_ms
    return json.dumps({"name": view["name"], "createdAt": created, "state": json.dumps(state), **state})


def prepare_experiment(client, experiment_id: str, config: dict) -> None:
    """Tag the experiment as model development and (re)write the saved views for this config."""
    client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    client.set_experiment_tag(experiment_id, NOTE_TAG, description(experiment_id, config))
    for key, view in views(config).items():
        client.set_experiment_tag(experiment_id, VIEW_TAG_PREFIX + key, view_tag_value(view))


def view_path(experiment_id: str, view_id: str) -> str:
    return f"#/experiments/{experiment_id}/runs?{WORKFLOW_PARAM}&viewStateShareKey={view_id}"


def view_url(experiment_id: str, view_id: str = "declip-regionclf", base: str = "http://127.0.0.1:5000") -> str:
    return f"{base}/{view_path(experiment_id, view_id)}"
