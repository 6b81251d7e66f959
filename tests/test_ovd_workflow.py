"""The OVD rules in the DAG: mini target, paper preset (GPU resources), OV-LVIS overlay (dry runs)."""

import os
import re
import subprocess
import sys

from declip.config import ROOT


def _dry(tmp_path, *args):
    r = subprocess.run([sys.executable, "-m", "snakemake", "--directory", str(tmp_path), "-n", "--cores", "2", *args],
                       cwd=ROOT, capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-3000:]
    return r.stdout


def _count(out, rule):
    m = re.search(rf"^{rule}\s+(\d+)$", out, re.M)
    return int(m.group(1)) if m else 0


def test_mini_ovd_table_trains_one_detector_per_variant(tmp_path):
    out = _dry(tmp_path, "--", "results/tables/ovd.csv")
    assert _count(out, "train_detector") == 3 and _count(out, "evaluate_ovd") == 6 and _count(out, "table_ovd") == 1
    assert "results/eval/ovd/mini2d_val/boxclf/declip/metrics.json" in out


def test_paper_presets_list_ovd_jobs_with_gpus(tmp_path):
    b16 = str(ROOT / "workflow/presets/paper-b16.yaml")
    out = _dry(tmp_path, "--configfile", b16, "--", "results/tables/ovd.csv")
    assert _count(out, "ovcoco_annotations") == 2 and _count(out, "train_detector") == 3
    jobs = out.split("\n\n")
    train = [j for j in jobs if "rule train_detector:" in j]
    assert train and all("gpu=8" in j for j in train)
    assert all("gpu=1" in j for j in jobs if "rule evaluate_ovd:" in j)
    out = _dry(tmp_path, "--configfile", b16, str(ROOT / "workflow/presets/ovd-lvis.yaml"), "--",
               "results/tables/ovd.csv")
    assert "data/.downloads/lvis.json" in out and _count(out, "ovcoco_annotations") == 0
    assert "results/eval/ovd/lvis_v1_val/detector/declip/metrics.json" in out
