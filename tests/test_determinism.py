"""Same commit, config and thread count -> bit-identical mini outputs (issue 10, item 7).

A short chain (synthetic world -> tiny CLIP pretraining -> clipself distillation -> region classification)
runs twice from nothing in two fresh clones; every output file must be identical, apart from the
wall-clock fields of JSON files (seconds, throughput, timestamps), which are removed before comparing.
"""

import pytest
import yaml
from workflow_clone import comparable_outputs, fresh_clone, run_snakemake

pytestmark = pytest.mark.slow

TARGET = "results/eval/regionclf/mini2d_val/clipself/metrics.json"
SHORT = {
    "mini": {"world2d": {"n_train": 48, "n_val": 12, "n_single": 40},
             "pretrain": {"steps": 20, "batch_size": 16, "warmup_steps": 2, "min_zero_shot_acc": 0.0}},
    "distill": {"max_steps": 4, "checkpoint_every": 2, "log_every": 1},
    "tables": {"report": ""},
}


def test_two_runs_of_a_short_chain_give_identical_outputs(tmp_path):
    runs = []
    for name in ("first", "second"):
        clone = fresh_clone(tmp_path / name)
        (clone / "short.yaml").write_text(yaml.safe_dump(SHORT))
        run_snakemake(clone, TARGET, "--cores", "2", "--configfile", "short.yaml", env={"MLFLOW_TRACKING_URI": ""})
        runs.append(comparable_outputs(clone, ["results", "models", "data"]))
    first, second = runs
    assert TARGET in first and "models/mini/declip-mini-vit.pt" in first and "results/distill/clipself/model.pt" in first
    differ = sorted(k for k in first.keys() | second.keys() if first.get(k) != second.get(k))
    assert not differ, f"outputs differ between two identical runs: {differ}"
