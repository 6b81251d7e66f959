"""MLflow mirror: child runs with the declip tags under the invocation's parent; re-runs supersede."""

import json

import pytest

from declip import config as C
from declip import tracking, tracking_guard


@pytest.fixture
def sqlite_uri(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv(tracking.PARENT_ENV, raising=False)
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


def test_child_run_with_tags_under_parent(tmp_path, sqlite_uri):
    cfg = C.load()
    parent = tracking.start_invocation(cfg, targets=["results/table2.csv"])
    assert parent
    spec, result = _job(tmp_path, cfg)
    run_id = tracking.record_job(spec, result, seconds=2.0)
    client, runs = _runs(sqlite_uri)
    child = client.get_run(run_id)
    tags = child.data.tags
    assert tags["mlflow.parentRunId"] == parent
    assert tags["declip.rule"] == "evaluate_regionclf"
    assert tags["declip.variant"] == "declip"
    assert tags["declip.dataset"] == "mini2d_val"
    assert tags["declip.job_key"] == "evaluate_regionclf:dataset=mini2d_val:variant=declip"
    assert tags["declip.git_sha"]
    assert child.data.metrics["rois.thing_top1"] == 42.0
    assert child.data.params["method.dense_mode"] == "qq"
    history = client.get_metric_history(run_id, "train/loss")
    assert [m.step for m in history] == [0, 1, 2]
    tracking.end_invocation(cfg, "FINISHED")
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
