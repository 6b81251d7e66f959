"""`--profile slurm` on a real single-node SLURM 22.05 cluster with accounting (tests/slurm/cluster.sh).

Brings the cluster up in a temporary folder (installing the Debian packages first when they are missing
and we are root), runs a small target in a fresh clone through sbatch, checks with sacct that every job
ran through SLURM and that the outputs equal a local run's, and stops the daemons it started by pid.
DECLIP_SLURM_TARGETS overrides the target (e.g. `results/table2.csv` for the whole Table 2 chain).
"""

import os
import shutil
import subprocess
import sys

import pytest
from workflow_clone import ROOT, comparable_outputs, fresh_clone, run_snakemake

pytestmark = pytest.mark.slow

CLUSTER = ROOT / "tests" / "slurm" / "cluster.sh"
# The synthetic worlds and one teacher cache: three jobs, no pretraining; the teacher job requests a GPU
# (below) so a gres request is scheduled too.
TARGETS = os.environ.get("DECLIP_SLURM_TARGETS",
                         "cache/teachers/mini2d/dinov2_b/index.json data/mini3d/MANIFEST.json").split()
GPU_OVERRIDE = ["--config", "resources={teachers: {gpus: 1}}"]
COMPARED = ["data", "cache", "results", "models"]
SBIN = {"PATH": os.environ["PATH"] + ":/usr/sbin:/sbin"}


def _available() -> str | None:
    if not sys.platform.startswith("linux") or shutil.which("bash") is None:
        return "needs Linux and bash"
    missing = subprocess.run([str(CLUSTER), "install"], capture_output=True, text=True, env={**os.environ, **SBIN})
    if missing.returncode != 0:
        return f"SLURM packages missing and not installable here: {missing.stderr.strip()[-300:]}"
    return None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = _available()
    if reason:
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("slurm-cluster")
    env = {"PATH": f"{folder / 'bin'}:{SBIN['PATH']}", "SLURM_CONF": str(folder / "etc" / "slurm.conf")}
    try:
        up = subprocess.run([str(CLUSTER), "up", str(folder)], capture_output=True, text=True, timeout=300,
                            env={**os.environ, **env})
        assert up.returncode == 0, f"cluster.sh up failed:\n{up.stdout}\n{up.stderr}\nlogs in {folder}/log"
        yield env
    finally:
        subprocess.run([str(CLUSTER), "down", str(folder)], capture_output=True, timeout=120, env={**os.environ, **env})
    for name in ("slurmd", "slurmctld", "slurmdbd", "mariadbd", "munged"):
        assert not (folder / "run" / f"{name}.pid").exists(), f"{name} was not stopped"


def _sacct(env) -> list[dict]:
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-a", "-S", "2000-01-01", "-o", "JobID,State,Comment,ReqTRES"],
                         capture_output=True, text=True, check=True, env={**os.environ, **env}).stdout
    rows = [dict(zip(("id", "state", "comment", "tres"), line.split("|"))) for line in out.splitlines() if line]
    return rows


def test_profile_slurm_runs_every_job_through_sbatch_and_matches_a_local_run(cluster, tmp_path):
    local = fresh_clone(tmp_path / "local")
    run_snakemake(local, *TARGETS, *GPU_OVERRIDE, "--cores", "2")

    clone = fresh_clone(tmp_path / "cluster")
    r = run_snakemake(clone, *TARGETS, *GPU_OVERRIDE, "--profile", "slurm", "--slurm-init-seconds-before-status-checks", "2",
                      "--seconds-between-status-checks", "2", "--latency-wait", "5", env=cluster)
    dry = run_snakemake(local, *TARGETS, *GPU_OVERRIDE, "--forceall", "-n", "--quiet", "rules")
    expected = {line.split()[0]: int(line.split()[1]) for line in dry.stdout.splitlines()
                if len(line.split()) == 2 and line.split()[1].isdigit() and line.split()[0] != "total"}
    assert expected, dry.stdout

    jobs = _sacct(cluster)
    ran = {}
    for job in jobs:
        assert job["state"] == "COMPLETED", (job, r.stderr[-3000:])
        rule = job["comment"].removeprefix("rule_").split("_wildcards_")[0]
        ran[rule] = ran.get(rule, 0) + 1
    assert ran == expected, f"sacct shows {ran}; the workflow has {expected}"
    gpu_jobs = [j for j in jobs if "gres/gpu=1" in j["tres"]]
    assert [j["comment"].split("_wildcards_")[0] for j in gpu_jobs] == ["rule_teachers"], jobs

    mine, theirs = comparable_outputs(clone, COMPARED), comparable_outputs(local, COMPARED)
    differ = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
    assert mine and not differ, f"SLURM and local outputs differ: {differ}"
