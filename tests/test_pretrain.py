"""Tiny-CLIP pretraining: the loss, the schedule, the zero-shot metric, and a short end-to-end run."""

from __future__ import annotations

import json
import math

import pytest
import torch

from declip import config
from declip.data import mini2d
from declip.errors import UserFacingError
from declip.models import pretrain as P

WORLD = {"seed": 5, "image_size": 64, "n_train": 12, "n_val": 2, "n_single": 10}
SHORT = {"steps": 3, "batch_size": 8, "warmup_steps": 1, "max_seconds": 120, "min_zero_shot_acc": 0.0}


def test_zero_shot_accuracy_perfect_and_random():
    torch.manual_seed(0)
    classes = torch.nn.functional.normalize(torch.randn(10, 32), dim=-1)
    labels = torch.arange(1000) % 10
    perfect = classes[labels] + 0.01 * torch.randn(1000, 32)
    assert P.zero_shot_accuracy(perfect, classes, labels) == 100.0
    random_feats = torch.nn.functional.normalize(torch.randn(5000, 32), dim=-1)
    acc = P.zero_shot_accuracy(random_feats, classes, torch.arange(5000) % 10)
    assert 7.0 < acc < 13.0  # chance is 10 %; 3 binomial standard deviations is about 1.3 %


def test_contrastive_loss_hand_computed():
    eye = torch.eye(2)
    # Orthogonal unit features, scale 1: each row is log-softmax of [1, 0] -> log(1 + e^-1).
    loss = P.contrastive_loss(eye, eye, torch.tensor(1.0), torch.tensor([0, 1]))
    assert float(loss) == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
    # Same text for both pairs: targets are 1/2, 1/2 and logits [1, 0] -> -(log p1 + log p0) / 2.
    p1 = math.exp(1) / (math.exp(1) + 1)
    same = P.contrastive_loss(eye, eye, torch.tensor(1.0), torch.tensor([7, 7]))
    assert float(same) == pytest.approx(-(math.log(p1) + math.log(1 - p1)) / 2, abs=1e-6)


def test_lr_schedule():
    assert P.lr_at(0.05, 0.1, 1.0) == pytest.approx(0.5)
    assert P.lr_at(0.1, 0.1, 1.0) == pytest.approx(1.0)
    assert P.lr_at(0.55, 0.1, 1.0) == pytest.approx(0.5)
    assert P.lr_at(1.0, 0.1, 1.0) == pytest.approx(0.0)


def test_prompts_use_the_right_article():
    assert P.prompt("a photo of {}.", "chair") == "a photo of a chair."
    assert P.prompt("a photo of {}.", "apple") == "a photo of an apple."


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("pt_world")
    mini2d.generate(config.load(overrides={"mini": {"world2d": WORLD}}), root)
    return root


def test_short_pretraining_saves_and_reloads_identically(tiny_world, tmp_path):
    from declip.models.clip import load_clip

    torch.set_num_threads(1)
    cfg = config.load(overrides={"mini": {"world2d": WORLD, "pretrain": SHORT}})
    out = tmp_path / "mini" / "tiny.pt"
    metrics = P.pretrain(cfg, tiny_world / "MANIFEST.json", out)
    assert metrics["steps"] == 3 and out.exists()
    written = json.loads((tmp_path / "mini" / "pretrain_metrics.json").read_text())
    assert written["zero_shot_acc"] == metrics["zero_shot_acc"] and written["steps"] == 3
    assert set(written) >= {"zero_shot_acc", "seconds", "steps"}
    reloaded = load_clip(cfg["student"], checkpoint=out, checkpoint_format="open_clip")
    again = P.evaluate_single(reloaded, cfg["student"], tiny_world, cfg["mini"]["pretrain"]["image_size"])
    assert again["zero_shot_acc"] == metrics["zero_shot_acc"]
    assert again["per_class"] == metrics["per_class"]


def test_accuracy_below_threshold_fails(tiny_world, tmp_path):
    torch.set_num_threads(1)
    # Accuracy is at most 100 %, so a threshold above 1.0 must fail after the step has saved its metrics.
    cfg = config.load(overrides={"mini": {"world2d": WORLD, "pretrain": {**SHORT, "steps": 1, "min_zero_shot_acc": 1.01}}})
    with pytest.raises(UserFacingError, match="min_zero_shot_acc"):
        P.pretrain(cfg, tiny_world, tmp_path / "t.pt")
    assert (tmp_path / "pretrain_metrics.json").exists()


def test_training_samples_never_come_from_held_out_splits(tiny_world):
    cfg = config.load()
    data = P.PretrainData(tiny_world, cfg["student"], 64)
    assert data.images.shape[0] == WORLD["n_train"]
    x, ids = data.sample(16, 0.5, torch.Generator().manual_seed(0))
    assert x.shape == (16, 3, 64, 64) and ids.shape == (16,)
    texts = [data.texts[i] for i in ids.tolist()]
    assert sum(t.startswith("a photo of") and (" on " in t or " in front of " in t) for t in texts) == 8
