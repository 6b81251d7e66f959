"""End to end on a tiny mini preset: dataset, pretraining, detector training on base classes, both OVD
protocols, their scorer, and results/tables/ovd.csv through the real Snakemake DAG (the `clip` variant)."""

import csv
import json
import os
import subprocess
import sys

import pytest

from declip.config import ROOT

pytestmark = pytest.mark.slow

CONFIG = ["mini={world2d: {n_train: 48, n_val: 8, n_single: 30}, "
          "pretrain: {steps: 8, batch_size: 16, warmup_steps: 2, min_zero_shot_acc: 0.0}}",
          "evaluate={ovd: {detector: {max_steps: 3, log_every: 1}}}", "tables={report: '', ovd_variants: [clip]}"]


def test_ovd_table_from_nothing(tmp_path):
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db")
    cmd = [sys.executable, "-m", "snakemake", "--directory", str(tmp_path), "--cores", "2", "--config", *CONFIG,
           "--", "results/tables/ovd.csv"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    det = torch_load(tmp_path / "results/ovd/clip/detector.pt")
    assert det["novel"] == ["lamp", "bucket", "pillow"] and det["steps"] == 3
    for mode in ("detector", "boxclf"):
        m = json.loads((tmp_path / f"results/eval/ovd/mini2d_val/{mode}/clip/metrics.json").read_text())
        assert m["split"]["novel"] == ["lamp", "bucket", "pillow"] and m["scorer"] == "ovcoco"
        assert 0.0 <= m["AP50_base"] <= 100.0
        dets = json.loads((tmp_path / f"results/eval/ovd/mini2d_val/{mode}/clip/detections.json").read_text())
        assert all(set(d) == {"image_id", "category_id", "bbox", "score"} for d in dets)
    rows = list(csv.DictReader(open(tmp_path / "results/tables/ovd.csv")))
    assert {(r["mode"], r["variant"]) for r in rows if r["protocol"] != "paper"} == {("detector", "clip"), ("boxclf", "clip")}
    # Trained again from scratch: the same detector, bit for bit (its init and samplers are seeded).
    again = subprocess.run(cmd[:-2] + ["--forcerun", "train_detector", "--", "results/ovd/clip/detector.pt"],
                           cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    retrained = torch_load(tmp_path / "results/ovd/clip/detector.pt")
    assert retrained["state"].keys() == det["state"].keys()
    assert all(retrained["state"][k].equal(v) for k, v in det["state"].items())


def torch_load(path):
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)
