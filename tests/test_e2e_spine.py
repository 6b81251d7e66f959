"""End to end on the mini preset, in a temporary directory: the dataset and pretraining stages through
the real Snakemake DAG, every job mirrored into a temporary MLflow database."""

import json
import os
import subprocess
import sys

import pytest

from declip.config import ROOT

pytestmark = pytest.mark.slow

SMALL = ("mini={world2d: {n_train: 48, n_val: 8, n_single: 30}, "
         "pretrain: {steps: 8, batch_size: 16, warmup_steps: 2, min_zero_shot_acc: 0.0}}")
TARGETS = ["data/mini2d/MANIFEST.json", "models/mini/declip-mini-vit.pt"]


def _run(workdir, *extra):
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{workdir}/mlflow.db")
    cmd = [sys.executable, "-m", "snakemake", "--directory", str(workdir), "--cores", "2",
           "--config", SMALL, "tables={report: ''}", *extra, "--", *TARGETS]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def _active_runs(workdir):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir}/mlflow.db")
    exp = client.get_experiment_by_name("declip-repro")
    return client.search_runs([exp.experiment_id])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    wd = tmp_path_factory.mktemp("mini")
    _run(wd)
    return wd


def test_dataset_and_pretraining_outputs(workdir):
    manifest = json.loads((workdir / "data/mini2d/MANIFEST.json").read_text())
    assert manifest
    assert len(list((workdir / "data/mini2d/train").glob("*.png"))) == 48
    metrics = json.loads((workdir / "models/mini/pretrain_metrics.json").read_text())
    assert 0.0 <= metrics["zero_shot_acc"] <= 100.0 and metrics["steps"] == 8
    assert (workdir / "models/mini/declip-mini-vit.pt").stat().st_size > 1_000_000
    assert (workdir / "logs/pretrain.log").exists() and (workdir / "benchmarks/pretrain.tsv").exists()


def test_one_run_per_job_tagged_with_the_invocation_run(workdir):
    runs = _active_runs(workdir)
    children = [r for r in runs if "declip.job_key" in r.data.tags]
    parents = [r for r in runs if r.data.tags.get("declip.invocation") == "snakemake"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.data.tags["declip.rule"] for r in children) == ["dataset_mini2d", "pretrain"]
    for r in children:
        tags = r.data.tags
        assert tags["declip.invocation_run"] == parents[0].info.run_id and "mlflow.parentRunId" not in tags
        assert tags["declip.dataset"] == "mini2d" and tags["declip.variant"] == ""
        assert tags["declip.git_sha"] and tags["declip.job_key"] == tags["declip.rule"]
        assert r.info.status == "FINISHED"
    pretrain = next(r for r in children if r.data.tags["declip.rule"] == "pretrain")
    assert "zero_shot_acc" in pretrain.data.metrics
    assert pretrain.data.params["mini.pretrain.steps"] == "8"


def test_rerun_leaves_one_active_run_per_job(workdir):
    _run(workdir, "--forcerun", "pretrain")
    children = [r for r in _active_runs(workdir) if r.data.tags.get("declip.rule") == "pretrain"]
    assert len(children) == 1


def _dry_run(workdir, *config):
    cmd = [sys.executable, "-m", "snakemake", "--directory", str(workdir), "-n", "--cores", "1",
           "--config", *config, "tables={report: ''}", "--", *TARGETS]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


def test_a_changed_parameter_reruns_exactly_the_jobs_that_read_it(workdir):
    assert "Nothing to be done" in _dry_run(workdir, SMALL)
    out = _dry_run(workdir, SMALL.replace("warmup_steps: 2", "warmup_steps: 3"))  # read by pretrain only
    assert "rule pretrain:" in out and "rule dataset_mini2d:" not in out
    # Another dataset's entry is not part of what the mini2d jobs read.
    assert "Nothing to be done" in _dry_run(workdir, SMALL, "datasets={mini3d: {root: data/elsewhere}}")
