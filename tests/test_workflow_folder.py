"""The workflow belongs to its folder, not to where the package is installed (issue 10, item 2)."""

import os
import subprocess
import sys
import zipfile

import pytest
from workflow_clone import ROOT, fresh_clone, run_snakemake

from declip import config as C
from declip.data import download as dl


def test_run_paths_follow_the_workflow_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(C.WORKFLOW_DIR_ENV, str(tmp_path))
    assert dl.manifest_dir() == tmp_path / "workflow" / "manifests"
    assert C.git_sha() is None  # tmp_path is no checkout: no borrowed commit
    monkeypatch.delenv(C.WORKFLOW_DIR_ENV)
    monkeypatch.chdir(tmp_path)
    assert C.workflow_dir() == tmp_path


def test_schema_and_defaults_ship_with_the_package(tmp_path):
    """A wheel (a non-editable install) carries config.schema.yaml and config.yaml, and loads them far from
    any checkout."""
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(tmp_path / "dist"), str(ROOT)], capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {r.stderr[-300:]}")
    wheel = next((tmp_path / "dist").glob("*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {"declip/resources/config.schema.yaml", "declip/resources/config.yaml"} <= set(names)
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = "import declip.config as C; c = C.load(); print(C.__file__, c['preset'], c['tracking']['experiment'])"
    out = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(site)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(site / "declip" / "config.py"), "mini", "declip-repro"]


def _listing(folder):
    return {str(p.relative_to(folder)) for p in folder.rglob("*")
            if ".git" not in p.relative_to(folder).parts and "__pycache__" not in p.parts}


@pytest.mark.slow
def test_two_clones_sharing_one_environment_keep_their_own_runs(tmp_path):
    a, b = fresh_clone(tmp_path / "a"), fresh_clone(tmp_path / "b")
    git = ["git", "-C", str(b), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "b moves on"], check=True)
    sha_b = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    # One environment for both: the package imported (and the `declip` command's code) is clone a's.
    env = {"PYTHONPATH": str(a), "MLFLOW_TRACKING_URI": ""}
    before = _listing(a)
    run_snakemake(b, "data/mini3d/MANIFEST.json", "--cores", "1", env=env)

    assert (b / "data" / "mini3d" / "MANIFEST.json").exists() and (b / "mlflow.db").exists()
    leaked = sorted(_listing(a) - before)
    assert leaked == [], f"clone b's run wrote into clone a: {leaked}"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{b / 'mlflow.db'}")
    exp = client.get_experiment_by_name("declip-repro")
    assert exp.artifact_location == (b / "mlartifacts").resolve().as_uri()
    runs = client.search_runs([exp.experiment_id])
    jobs = [r for r in runs if r.data.tags.get("declip.rule") == "dataset_mini3d"]
    assert len(jobs) == 1, [r.data.tags for r in runs]
    assert {r.data.tags["declip.git_sha"] for r in runs} == {sha_b}
