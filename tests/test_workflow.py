"""The Snakemake DAG: dry runs for the mini and paper presets, lint, the SLURM profile, bad config."""

import os
import subprocess
import sys

import pytest

from declip.config import ROOT

SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def snakemake(*args, workdir, env=None, timeout=300):
    """Run snakemake from the repository root (where ./slurm lives) with outputs under `workdir`."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([*SNAKEMAKE, "--directory", str(workdir), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=full_env)


def _jobs(out):
    """Job counts from the dry run's 'Job stats' table."""
    counts, in_table = {}, False
    for line in out.splitlines():
        if line.startswith("job ") and "count" in line:
            in_table = True
            continue
        if in_table:
            parts = line.split()
            if not parts or parts[0] == "total":
                break
            if parts[0].startswith("-"):
                continue
            counts[parts[0]] = int(parts[1])
    return counts


def test_dry_run_mini_lists_dataset_and_pretraining(tmp_path):
    r = snakemake("-n", "--cores", "2", workdir=tmp_path)
    assert r.returncode == 0, r.stderr + r.stdout
    jobs = _jobs(r.stdout)
    assert jobs["dataset_mini2d"] == 1 and jobs["dataset_mini3d"] == 1 and jobs["pretrain"] == 1
    assert "download" not in jobs


def test_dry_run_mini_one_teacher_job_per_teacher(tmp_path):
    from declip.config import load

    cfg = load()
    r = snakemake("-n", "--cores", "2", "ablations", workdir=tmp_path)
    assert r.returncode == 0, r.stderr + r.stdout
    jobs = _jobs(r.stdout)
    # 6 VFMs used by the variants + SD on the training set, + the figure VFM on the evaluation set;
    # never one extraction per variant.
    assert jobs["teachers"] == 8
    # One label-free pretraining per tiny teacher used (6 VFMs + SD), shared by every seed; SD and the
    # default VFM, which most variants wait for, by the higher-priority copy of the rule.
    assert jobs["pretrain_teacher"] + jobs["pretrain_teacher_first"] == 7 and jobs["pretrain_teacher_first"] == 2
    assert jobs["clip_affinity"] == 1 and jobs["claims"] == 1
    # Every trained variant of config.yaml once; `clip` is not trained, and `context_q` / `vfm_dinov2_b`
    # are the same recipes as `declip` / `declip_cvpr` (they share those checkpoints); plus the
    # `seed_variants` once per extra seed (claims table).
    extra = len(cfg["seed_variants"]) * (len(cfg["seeds"]) - 1)
    assert jobs["distill"] == 22 + extra
    assert jobs["evaluate_regionclf"] == 25 + extra and jobs["evaluate_tfseg"] == 25 + extra


def test_dry_run_table2_mini(tmp_path):
    r = snakemake("-n", "--cores", "2", "results/table2.csv", workdir=tmp_path)
    assert r.returncode == 0, r.stderr + r.stdout
    jobs = _jobs(r.stdout)
    assert jobs["distill"] == 2 and jobs["evaluate_ov3d"] == 12 and jobs["table2"] == 1


def test_dry_run_paper_preset_lists_downloads(tmp_path):
    r = snakemake("-n", "--cores", "2", "--configfile", str(ROOT / "workflow/presets/paper-b16.yaml"), workdir=tmp_path)
    assert r.returncode == 0, r.stderr + r.stdout
    jobs = _jobs(r.stdout)
    assert jobs.get("download", 0) >= 3 and jobs.get("download_weights") == 1
    assert jobs.get("manual_dataset", 0) >= 1
    assert "pretrain" not in jobs and "dataset_mini2d" not in jobs


def test_lint_is_clean(tmp_path):
    r = snakemake("--lint", workdir=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


def test_slurm_profile_dry_run(tmp_path):
    r = snakemake("--profile", "slurm", "-n", workdir=tmp_path)
    assert "profiles slurm and workflow specific profile profiles/default" in r.stdout + r.stderr, r.stdout + r.stderr
    assert r.returncode == 0, r.stdout + r.stderr


def test_invalid_config_stops_before_any_job(tmp_path):
    r = snakemake("-n", "--cores", "1", "--config", "method={context_loss: cosine}", workdir=tmp_path)
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "method.context_loss" in out and "'kl'" in out


def test_slurm_preflight_without_sbatch(tmp_path):
    """The real (non-dry) run stops in onstart when the SLURM executor is chosen but sbatch is absent."""
    if subprocess.run(["which", "sbatch"], capture_output=True).returncode == 0:
        pytest.skip("sbatch exists on this machine: the preflight has nothing to refuse")
    r = snakemake("--profile", "slurm", "--config", "tables={report: ''}", "--", "data/mini2d/MANIFEST.json",
                  workdir=tmp_path, env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"})
    assert r.returncode != 0
    assert "sbatch" in r.stdout + r.stderr
    assert not (tmp_path / "data/mini2d/MANIFEST.json").exists()


def test_dry_run_ov6dpe_mini_and_paper(tmp_path):
    r = snakemake("-n", "--cores", "2", "results/tables/ov6dpe.csv", workdir=tmp_path)
    assert r.returncode == 0, r.stderr + r.stdout
    jobs = _jobs(r.stdout)
    assert jobs["dataset_mini_pose"] == 1 and jobs["evaluate_ov6dpe"] == 6 and jobs["table_ov6dpe"] == 1
    r = snakemake("-n", "--cores", "2", "results/tables/ov6dpe.csv", "--configfile",
                  str(ROOT / "workflow/presets/paper-b16.yaml"), workdir=tmp_path / "paper")
    assert r.returncode == 0, r.stderr + r.stdout
    jobs = _jobs(r.stdout)
    # REAL275 and Toyota-Light (manual steps) x oracle/text masks x clip/clipself/declip
    assert jobs["manual_dataset"] == 2 and jobs["evaluate_ov6dpe"] == 12 and jobs["table_ov6dpe"] == 1
    assert "dataset_mini_pose" not in jobs
def test_dry_run_ovvis_mini_and_paper(tmp_path):
    r = snakemake("-n", "--cores", "2", "results/tables/ovvis.csv", workdir=tmp_path)
    assert r.returncode == 0, r.stderr + r.stdout
    jobs = _jobs(r.stdout)
    # clip, clipself, declip x (oracle, imperfect) on the mini video world
    assert jobs["dataset_mini_video"] == 1 and jobs["evaluate_ovvis"] == 6 and jobs["table_ovvis"] == 1
    (tmp_path / "paper").mkdir()
    r = snakemake("-n", "--cores", "2", "results/tables/ovvis.csv",  # targets first: --configfile takes the rest
                  "--configfile", str(ROOT / "workflow/presets/paper-b16.yaml"), workdir=tmp_path / "paper")
    assert r.returncode == 0, r.stderr + r.stdout
    jobs = _jobs(r.stdout)
    # LV-VIS: oracle + clipvis tracks; YouTube-VIS 2019/2021 and OVIS (GT not public): clipvis only; 3 variants
    assert jobs["evaluate_ovvis"] == 15 and jobs["manual_dataset"] == 4 and "dataset_mini_video" not in jobs
    for name in ("lvvis", "ytvis2019", "ytvis2021", "ovis"):
        assert f"data/.downloads/{name}.manual.json" in r.stdout
