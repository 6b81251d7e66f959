"""The OVSS family in the DAG: mini and paper dry runs, the GPU launcher for multi-GPU head training."""

import re

import pytest

from declip.config import ROOT
from test_workflow import _jobs, snakemake


def test_dry_run_mini_ovss_jobs(tmp_path):
    r = snakemake("-n", "--cores", "2", "results/tables/ovss.csv", workdir=tmp_path)
    assert r.returncode == 0, r.stderr + r.stdout
    jobs = _jobs(r.stdout)
    # clip, clipself, declip: one head each, one mini benchmark each, clip is not distilled.
    assert jobs["ovss_train"] == 3 and jobs["evaluate_ovss"] == 3 and jobs["table_ovss"] == 1
    assert jobs["distill"] == 2


@pytest.mark.parametrize("preset,gpus", [("paper-b16", 1), ("paper-l14", 4)])
def test_dry_run_paper_lists_ovss_jobs_with_gpus(tmp_path, preset, gpus):
    r = snakemake("-n", "-p", "--cores", "8", "--configfile", str(ROOT / f"workflow/presets/{preset}.yaml"),
                  "--config", f"evaluate={{ovss: {{gpus: {gpus}}}}}", "--", "results/tables/ovss.csv", workdir=tmp_path)
    assert r.returncode == 0, r.stderr + r.stdout
    jobs = _jobs(r.stdout)
    assert jobs["ovss_train"] == 3 and jobs["evaluate_ovss"] == 18 and jobs["table_ovss"] == 1
    blocks = r.stdout.split("\n\n")
    train = [b for b in blocks if "rule ovss_train:" in b]
    assert len(train) == 3 and all(re.search(rf"\bgpu={gpus}\b", b) for b in train)
    launcher = f"torchrun --standalone --nproc_per_node={gpus} -m declip.cli evaluate" if gpus > 1 else "declip evaluate"
    assert all(launcher in b for b in train)
    evals = [b for b in blocks if "rule evaluate_ovss:" in b]
    assert all(re.search(r"\bgpu=1\b", b) for b in evals)
    for manifest in ("ade20k_full", "pascal_context459", "catseg_classes", "cocostuff164k"):
        assert manifest in r.stdout
