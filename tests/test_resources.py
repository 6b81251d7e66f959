"""Each job's request comes from the preset, site settings from `cluster:` (issue 10, item 4): a dry run
with --profile slurm shows what every job would ask sbatch for."""

import re

import pytest
from workflow_clone import ROOT, SNAKEMAKE

pytestmark = pytest.mark.slow


def _requests(tmp_path, *args):
    import subprocess

    r = subprocess.run([*SNAKEMAKE, "results/table2.csv", "--directory", str(tmp_path), "--profile", "slurm", "-n",
                        *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    out, rules = {}, re.findall(r"^(?:local)?rule (\w+):\n(?:.*\n)*?\s+resources: (.*)$", r.stdout + r.stderr, re.M)
    for rule, res in rules:
        out[rule] = dict(kv.split("=", 1) for kv in res.split(", "))
    assert out, r.stdout[-2000:]
    return out


def test_mini_requests_no_gpu_and_paper_requests_one_per_gpu_job(tmp_path):
    mini = _requests(tmp_path / "mini")
    assert {r: v["gpu"] for r, v in mini.items()} == {r: "0" for r in mini}
    assert mini["pretrain"]["mem_mb"] == "4000" and mini["evaluate_ov3d"]["runtime"] == "10"
    paper = _requests(tmp_path / "paper", "--configfile", str(ROOT / "workflow/presets/paper-b16.yaml"))
    assert paper["teachers"]["gpu"] == paper["evaluate_ov3d"]["gpu"] == paper["distill"]["gpu"] == "1"
    assert paper["download"]["gpu"] == "0" and paper["teachers"]["mem_mb"] == "32000"


def test_site_settings_come_from_one_config_section(tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text("cluster: {partition: cpu, gpu_partition: gpu, account: lab, constraint: 'a100|h100'}\n"
                    "resources: {evaluate: {gpus: 1}}\n")
    res = _requests(tmp_path / "run", "--configfile", str(site))
    assert res["evaluate_ov3d"]["slurm_partition"] == "gpu" and res["evaluate_ov3d"]["constraint"] == "a100|h100"
    assert res["dataset_mini3d"]["slurm_partition"] == "cpu" and "constraint" not in res["dataset_mini3d"]
    assert {v["slurm_account"] for v in res.values()} == {"lab"}
