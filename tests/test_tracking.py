"""MLflow mirror: one run per job with the declip tags and its invocation's run id; re-runs supersede."""

import json

import pytest

from declip import config as C
from declip import tracking, tracking_guard


@pytest.fixture
def sqlite_uri(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for name in (tracking.PARENT_ENV, tracking.DEFER_ENV):  # unset now and after the test (start_invocation sets them)
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    return uri


def _job(tmp_path, cfg):
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"rois": {"thing_top1": 42.0}, "note": "text is skipped"}))
    steps = tmp_path / "losses.jsonl"
    steps.write_text("\n".join(json.dumps({"step": s, "loss": 1.0 / (s + 1)}) for s in range(3)))
    spec = C.job_spec(cfg, "evaluate_regionclf", {"dataset": "mini2d_val", "variant": "declip"}, [str(metrics)])
    return spec, {"metrics": {"seconds": 1.5}, "step_metrics": str(steps)}


def _runs(uri, view="ACTIVE_ONLY"):
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("declip-repro")
    return client, client.search_runs([exp.experiment_id], run_view_type=getattr(ViewType, view))


def test_job_run_with_tags_and_its_invocation(tmp_path, sqlite_uri):
    cfg = C.load(overrides={"tracking": {"record": "job"}})
    parent = tracking.start_invocation(cfg, targets=["results/table2.csv"])
    assert parent
    spec, result = _job(tmp_path, cfg)
    run_id = tracking.record_job(spec, result, seconds=2.0)
    client, runs = _runs(sqlite_uri)
    child = client.get_run(run_id)
    tags = child.data.tags
    assert tags[tracking.INVOCATION_TAG] == parent
    assert "mlflow.parentRunId" not in tags  # not nested: the runs table lists it without expanding
    assert tags["declip.rule"] == "evaluate_regionclf"
    assert tags["declip.variant"] == "declip"
    assert tags["declip.dataset"] == "mini2d_val"
    assert tags["declip.job_key"] == "evaluate_regionclf:dataset=mini2d_val:variant=declip"
    assert tags["declip.git_sha"]
    assert child.data.metrics["rois.thing_top1"] == 42.0
    assert child.data.params["dense_mode"] == "qq"  # the variant's method settings are flat params
    assert "method.dense_mode" not in child.data.params
    assert child.data.params["evaluate.regionclf.dataset"] == "mini2d_val"  # other sections stay dotted
    assert child.info.run_name == "regionclf · declip · mini2d_val"
    assert child.data.metrics["thing_top1"] == 42.0  # headline = the paper's `rois` column
    history = client.get_metric_history(run_id, "train/loss")
    assert [m.step for m in history] == [0, 1, 2]
    tracking.end_invocation(cfg, "FINISHED")
    assert client.get_run(parent).info.status == "FINISHED"


def test_invocation_records_queued_job_runs_when_it_ends(tmp_path, sqlite_uri, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the queue lives in the working directory
    cfg = C.load(overrides={"tracking": {"record": "invocation"}})
    parent = tracking.start_invocation(cfg, targets=["ablations"])
    spec, result = _job(tmp_path, cfg)
    assert tracking.record_job(spec, result, seconds=2.0) is None  # queued, not recorded
    _, runs = _runs(sqlite_uri)
    assert [r.info.run_id for r in runs] == [parent]
    assert len(tracking_guard.pending()) == 1
    tracking.end_invocation(cfg, "FINISHED")
    client, runs = _runs(sqlite_uri)
    child = next(r for r in runs if r.info.run_id != parent)
    assert child.data.tags[tracking.INVOCATION_TAG] == parent
    assert child.data.tags["declip.job_key"] == spec["job_key"]
    assert child.data.metrics["thing_top1"] == 42.0
    assert child.info.status == "FINISHED"
    assert tracking_guard.pending() == []
    assert client.get_run(parent).info.status == "FINISHED"


def test_rerun_supersedes_older_run(tmp_path, sqlite_uri):
    cfg = C.load()
    spec, result = _job(tmp_path, cfg)
    first = tracking.record_job(spec, result, seconds=1.0)
    second = tracking.record_job(spec, result, seconds=1.0)
    _, active = _runs(sqlite_uri)
    keyed = [r for r in active if r.data.tags.get("declip.job_key") == spec["job_key"]]
    assert [r.info.run_id for r in keyed] == [second]
    _, deleted = _runs(sqlite_uri, "DELETED_ONLY")
    assert first in [r.info.run_id for r in deleted]


def test_tracking_failure_never_raises(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # pending records go to the working directory
    monkeypatch.setenv(tracking_guard.OFF_ENV, "")  # unset again afterwards
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the database folder should be")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{blocker}/mlflow.db")
    cfg = C.load()
    spec, result = _job(tmp_path, cfg)
    assert tracking.record_job(spec, result, seconds=1.0) is None
    assert tracking.start_invocation(cfg) is None


def test_default_uri_is_sqlite_in_the_working_directory(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    uri = tracking.tracking_uri({"uri": ""})
    assert uri == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"


def test_run_names_say_what_the_run_is():
    from declip.tracking_ui import run_name

    cfg = C.load()
    name = lambda rule, w: run_name(C.job_spec(cfg, rule, w, []))  # noqa: E731
    assert name("distill", {"variant": "no_sdgsc"}) == "distill · no_sdgsc"
    assert name("evaluate_regionclf", {"dataset": "mini2d_val", "variant": "declip"}) == "regionclf · declip · mini2d_val"
    assert name("evaluate_ov3d", {"host": "openmask3d", "mode": "dense", "variant": "clip"}) == "ov3d · clip · openmask3d · dense"
    assert name("pretrain", {}) == "pretrain · mini2d"
    assert name("table2", {}) == "table2"


def test_variants_differ_in_their_flat_params(tmp_path, sqlite_uri):
    cfg = C.load()
    runs = {}
    for variant in ("declip", "no_sdgsc", "lambda_0.5"):
        spec = C.job_spec(cfg, "distill", {"variant": variant}, [])
        runs[variant] = tracking.record_job(spec, {}, seconds=1.0)
    client, _ = _runs(sqlite_uri)
    params = {v: client.get_run(r).data.params for v, r in runs.items()}
    differing = {k for k in params["declip"] if len({p.get(k) for p in params.values()}) > 1}
    assert differing == {"sd_gsc", "lambda_context"}
    assert params["no_sdgsc"]["sd_gsc"] == "false" and params["declip"]["sd_gsc"] == "true"
    assert params["lambda_0.5"]["lambda_context"] == "0.5"


@pytest.mark.parametrize("when", ["job", "invocation"])  # tracking.record: at once, or queued and uploaded at the end
def test_tables_job_gives_one_run_per_table_with_files_and_figures(tmp_path, sqlite_uri, monkeypatch, when):
    monkeypatch.chdir(tmp_path)
    cfg = C.load(overrides={"paths": {"results": str(tmp_path / "results")}, "tracking": {"record": when}})
    invocation = tracking.start_invocation(cfg) if when == "invocation" else None

    def record():
        tracking.record_job(spec, {"artifacts": outputs}, seconds=1.0)
        if invocation:
            tracking.end_invocation(cfg, "FINISHED")

    tables = tmp_path / "results" / "tables"
    tables.mkdir(parents=True)
    outputs = []
    for tid in ("regionclf", "abl_sdgsc"):
        for ext, text in ((".csv", "variant,rois.thing_top1\ndeclip,50.0\n"), (".md", "| variant |\n")):
            (tables / f"{tid}{ext}").write_text(text)
            outputs.append(str(tables / f"{tid}{ext}"))
    for variant in ("declip", "clip"):
        (tmp_path / "results" / "figures" / variant).mkdir(parents=True)
        (tmp_path / "results" / "figures" / variant / "affinity.png").write_bytes(b"\x89PNG")
    spec = C.job_spec(cfg, "tables", {}, outputs)
    record()
    client, runs = _runs(sqlite_uri)
    by_name = {r.info.run_name: r for r in runs if r.info.run_id != invocation}
    assert set(by_name) == {"regionclf", "abl_sdgsc"}

    def files(run, path=""):
        out = []
        for f in client.list_artifacts(run.info.run_id, path):
            out += files(run, f.path) if f.is_dir else [f.path]
        return sorted(out)

    # abl_sdgsc shows declip and no_sdgsc: only declip has figures; regionclf shows every variant.
    assert files(by_name["abl_sdgsc"]) == ["abl_sdgsc.csv", "abl_sdgsc.md", "figures/declip/affinity.png"]
    assert files(by_name["regionclf"]) == ["figures/clip/affinity.png", "figures/declip/affinity.png",
                                           "regionclf.csv", "regionclf.md"]
    assert by_name["regionclf"].data.tags["declip.table"] == "regionclf"
    assert by_name["regionclf"].data.tags["mlflow.note.content"].startswith("Region classification")
    # A re-run supersedes the table runs.
    record()
    _, again = _runs(sqlite_uri)
    assert sorted(r.info.run_name for r in again if r.info.run_id != invocation) == ["abl_sdgsc", "regionclf"]


def test_experiment_opens_on_runs_with_saved_views(sqlite_uri):
    from declip.tracking_ui import EXPERIMENT_KIND_TAG, VIEW_TAG_PREFIX

    cfg = C.load()
    tracking.start_invocation(cfg)
    client, _ = _runs(sqlite_uri)
    tags = client.get_experiment_by_name("declip-repro").tags
    assert tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    view = json.loads(tags[VIEW_TAG_PREFIX + "declip-regionclf"])
    state = json.loads(view["state"])
    assert view["name"].startswith("Ablations: regionclf") and isinstance(view["createdAt"], int)
    assert state["searchFilter"] == "tags.`declip.rule` = 'evaluate_regionclf'"
    assert state["orderByKey"] == "metrics.`thing_top1`" and state["orderByAsc"] is False
    # Columns: the headline metrics and every method key a configured variant changes.
    assert state["selectedColumns"][:2] == ["metrics.`thing_top1`", "metrics.`stuff_top1`"]
    changed = {k for v in cfg["variants"] for k in cfg["variant_presets"][v]}
    assert {c[len("params.`"):-1] for c in state["selectedColumns"][2:]} == changed
    assert {k: view[k] for k in state} == state  # also readable by releases without named views
    # The description above the runs table links every saved view (one click from a bare `mlflow ui`).
    note = tags["mlflow.note.content"]
    exp_id = client.get_experiment_by_name("declip-repro").experiment_id
    for key in ("declip-regionclf", "declip-tfseg", "declip-ov3d", "declip-distill", "declip-tables"):
        assert f"(#/experiments/{exp_id}/runs?workflowType=machine_learning&viewStateShareKey={key})" in note
    hint = tracking.comparison_hint(cfg)
    assert "workflowType=machine_learning&viewStateShareKey=declip-regionclf" in hint
    tracking.end_invocation(cfg, "FINISHED")
