"""End to end through the Snakemake DAG on a tiny mini preset: mini 2D world, tiny CLIP, mini video world,
the CLIP-VIS protocol with oracle and imperfect tracks for `clip`, and results/tables/ovvis.csv."""

import csv
import os
import subprocess
import sys

import pytest

from declip.config import ROOT

pytestmark = pytest.mark.slow

SMALL = ("mini={world2d: {n_train: 48, n_val: 8, n_single: 30}, video: {n_videos: 3, n_frames: 4}, "
         "pretrain: {steps: 8, batch_size: 16, warmup_steps: 2, min_zero_shot_acc: 0.0}}")


def test_ovvis_table_from_nothing(tmp_path):
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db")
    cmd = [sys.executable, "-m", "snakemake", "--directory", str(tmp_path), "--cores", "2",
           "--config", SMALL, "tables={report: '', ovvis_variants: [clip]}", "--", "results/tables/ovvis.csv"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1500, env=env)  # shared CI machines
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = list(csv.DictReader((tmp_path / "results/tables/ovvis.csv").open()))
    ours = {(row["benchmark"], row["tracks"]): row for row in rows if row["variant"] == "clip"}
    assert set(ours) == {("mini_video", "oracle"), ("mini_video", "imperfect")}
    for row in ours.values():
        for key in ("AP", "AP50", "AP75", "AP_base", "AP_novel"):
            assert 0.0 <= float(row[key]) <= 100.0
    paper = {row["variant"]: row["AP.paper"] for row in rows if row["protocol"] == "paper"}
    assert paper == {"CLIP-VIS (OVIS) (paper)": "18.5", "CLIP-VIS + DeCLIP (OVIS) (paper)": "22.2"}
    assert (tmp_path / "results/eval/ovvis/mini_video/oracle/clip/results.json").is_file()
