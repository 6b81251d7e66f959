"""Tracking on a cluster (issue 10, item 3): an unreachable server costs a job seconds, tracking off is said
once, the job's record is kept and uploaded later by `declip track sync`, credentials never reach a log."""

import json
import logging
import socket
import time

import pytest

from declip import config as C
from declip import tracking
from declip import tracking_guard as guard
from declip.cli import main as cli_main


@pytest.fixture
def closed_port_uri(tmp_path, monkeypatch):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    uri = f"http://alice:s3cret-token@127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(guard.OFF_ENV, "")  # restored (unset) afterwards, even when a test turns tracking off
    monkeypatch.setenv(tracking.PARENT_ENV, "")
    for key in guard.HTTP_LIMITS:
        monkeypatch.delenv(key, raising=False)
    return uri


def _job(tmp_path, cfg):
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"rois": {"thing_top1": 42.0}}))
    spec = C.job_spec(cfg, "evaluate_regionclf", {"dataset": "mini2d_val", "variant": "declip"}, [str(metrics)])
    return spec, {"metrics": {"seconds": 1.5}}


def test_redact_masks_credentials_of_every_uri():
    assert guard.redact("http://u:p@h:5000/x and https://tok@h2 and sqlite:///a/b") == \
        "http://***@h:5000/x and https://***@h2 and sqlite:///a/b"


def test_job_spec_carries_no_tracking_uri():
    cfg = C.load(overrides={"tracking": {"uri": "http://u:secret@h:5000"}})
    spec = C.job_spec(cfg, "tables", {}, [])
    assert "secret" not in json.dumps(spec) and "uri" not in spec["tracking"]


def test_unreachable_server_costs_a_job_seconds_and_keeps_its_record(tmp_path, closed_port_uri, caplog):
    cfg = C.load()
    spec, result = _job(tmp_path, cfg)
    start = time.monotonic()
    with caplog.at_level(logging.WARNING):
        assert tracking.record_job(spec, result, seconds=2.0) is None
    assert time.monotonic() - start < 10
    pending = guard.pending()
    assert len(pending) == 1 and json.loads(pending[0].read_text())["job"]["job_key"] == spec["job_key"]
    assert "not recorded" in caplog.text and "declip track sync" in caplog.text
    assert "s3cret" not in caplog.text and "http://***@127.0.0.1" in caplog.text


def test_tracking_off_is_said_once_per_invocation(tmp_path, closed_port_uri, caplog):
    cfg = C.load()
    with caplog.at_level(logging.WARNING):
        assert tracking.start_invocation(cfg, targets=["results/table2.csv"]) is None
        for _ in range(3):  # the invocation's jobs inherit the environment
            spec, result = _job(tmp_path, cfg)
            tracking.record_job(spec, result, seconds=1.0)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "tracking is off for this run" in warnings[0].getMessage()
    assert "s3cret" not in caplog.text
    assert len(guard.pending()) == 1  # one job key, its latest record


def test_track_sync_uploads_pending_records_later(tmp_path, closed_port_uri, monkeypatch):
    cfg = C.load()
    spec, result = _job(tmp_path, cfg)
    tracking.record_job(spec, result, seconds=2.0)
    assert len(guard.pending()) == 1
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # the server is back
    assert cli_main(["track", "sync"]) == 0
    assert guard.pending() == []
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("declip-repro").experiment_id])
    assert [r.data.tags["declip.job_key"] for r in runs] == [spec["job_key"]]
    assert runs[0].data.metrics["rois.thing_top1"] == 42.0
    assert runs[0].data.tags["declip.git_sha"] != ""
