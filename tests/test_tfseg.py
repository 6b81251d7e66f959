"""Training-free segmentation (declip.evaluate.tfseg): sliding windows, averaging, background, scoring."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from declip.evaluate import tfseg as S

MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]


class LinearDense(torch.nn.Module):
    """A patch-embedding conv followed by a global term, so that outputs depend on the whole input."""

    patch_size = 4

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 5, 4, stride=4)

    def forward(self, x):
        y = self.conv(x)
        return SimpleNamespace(content=y + y.mean((2, 3), keepdim=True), context=None)


def test_window_grid_matches_mmseg_slide():
    # h=10, window 6, stride 3: rows = (10-6+3-1)//3+1 = 3 -> y1 0, 3, then the last flush: (4, 10)
    assert S.window_boxes(10, 6, 6, 3) == [(0, 6, 0, 6), (3, 9, 0, 6), (4, 10, 0, 6)]
    assert S.window_boxes(4, 4, 6, 3) == [(0, 4, 0, 4)]  # smaller than the window: one window


def test_image_equal_to_window_reproduces_a_single_forward():
    dense = LinearDense()
    text = F.normalize(torch.randn(3, 5), dim=-1)
    img = torch.randn(1, 3, 16, 16)
    out = S.slide_logits(dense, img, text, window=16, stride=8)
    tokens = F.normalize(dense(img).content, dim=1)
    single = F.interpolate(torch.einsum("bchw,qc->bqhw", tokens, text), size=(16, 16), mode="bilinear",
                           align_corners=False)[0]
    assert torch.allclose(out, single, atol=1e-6)


def test_overlapping_windows_are_averaged():
    class MeanColour(torch.nn.Module):  # every token = the window's mean value: one constant per window
        patch_size = 2

        def forward(self, x):
            m = x.mean((1, 2, 3)).view(-1, 1, 1, 1)
            return SimpleNamespace(content=torch.cat([m, torch.ones_like(m)], 1).expand(-1, 2, 2, 2))

    img = torch.zeros(1, 3, 4, 6)
    img[..., 4:] = 3.0  # window A (cols 0-3) mean 0, window B (cols 2-5) mean 1.5
    text = torch.tensor([[1.0, 0.0]])
    out = S.slide_logits(MeanColour(), img, text, window=4, stride=2)[0]
    ca, cb = 0.0, 1.5 / np.hypot(1.5, 1.0)  # cosine of (mean, 1) with (1, 0)
    assert torch.allclose(out[:, :2], torch.full((4, 2), ca))
    assert torch.allclose(out[:, 2:4], torch.full((4, 2), (ca + cb) / 2))
    assert torch.allclose(out[:, 4:], torch.full((4, 2), cb))


def test_resize_rule():
    assert S.resized_shape(375, 500, 448) == (448, 597)
    assert S.resized_shape(100, 5000, 448) == (41, 2048)  # long side capped like mmseg


# --- end to end on a tiny mini2d-format benchmark with a model that sees the ground truth -----------------

PALETTE = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.9, 0.1], [0.1, 0.1, 0.9]])


class ColourDense(torch.nn.Module):
    patch_size = 4

    def forward(self, x):
        x01 = x * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
        d = ((x01[:, None] - PALETTE.view(1, 3, 3, 1, 1)) ** 2).sum(2)
        onehot = (d == d.min(1, keepdim=True).values).float()
        return SimpleNamespace(content=F.avg_pool2d(onehot, 4) + 1e-3, context=None)


class FakeModel:
    def __init__(self):
        self.dense, self.device = ColourDense(), torch.device("cpu")

    def text(self, names, template_set):
        assert template_set == "imagenet"
        queries = [q for n in names for q in n.split("; ")]
        owner = [k for k, n in enumerate(names) for _ in n.split("; ")]
        # the second class has two synonyms: the first matches nothing, the second matches colour 1
        emb = {"red": [1, 0, 0], "nothing": [0, 0, 0.0], "green": [0, 1, 0], "blue": [0, 0, 1]}
        return F.normalize(torch.tensor([emb[q] for q in queries], dtype=torch.float32), dim=-1, eps=1e-6), owner


def _benchmark(tmp_path, n=2):
    gts = []
    for i in range(n):
        lab = np.zeros((24, 32), np.uint8)
        lab[:, 16:] = 1
        lab[8:16, 4:12] = 2
        lab[0, 0] = 255  # ignored
        img = (PALETTE[torch.from_numpy(np.minimum(lab, 2).astype(np.int64))].numpy() * 255).round().astype(np.uint8)
        (tmp_path / "val").mkdir(exist_ok=True)
        (tmp_path / "semantic" / "val").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(tmp_path / "val" / f"{i:06d}.png")
        Image.fromarray(lab).save(tmp_path / "semantic" / "val" / f"{i:06d}.png")
        gts.append(lab)
    return {"kind": "mini2d", "root": str(tmp_path), "split": "val", "format": "mini2d", "classes": "toy"}, gts


def test_end_to_end_perfect_model_and_saved_predictions(tmp_path, monkeypatch):
    from declip.data import semseg as D

    monkeypatch.setitem(D.CLASS_PROMPTS, "toy", ("red", "nothing; green", "blue"))
    spec, gts = _benchmark(tmp_path)
    settings = {"window": 16, "stride": 8, "short_side": 24, "logit_scale": 40, "prob_thd": 0.0,
                "background": False, "reduce_zero_label": False}
    m = S.evaluate(FakeModel(), "toy", spec, settings, {"mean": MEAN, "std": STD}, save_pred=tmp_path / "pred",
                   progress=False)
    assert m["mIoU"] == pytest.approx(100.0) and m["aAcc"] == pytest.approx(100.0)
    assert list(m["per_class"]) == ["red", "nothing", "blue"]
    saved = np.asarray(Image.open(tmp_path / "pred" / "000000.png"))
    assert (saved[gts[0] != 255] == gts[0][gts[0] != 255]).all()


def test_background_threshold(tmp_path):
    img01 = torch.rand(3, 8, 8)

    class Flat(torch.nn.Module):  # identical scores for all classes: max probability 1/3
        patch_size = 4

        def forward(self, x):
            return SimpleNamespace(content=torch.ones(x.shape[0], 2, 2, 2))

    model = SimpleNamespace(dense=Flat(), device=torch.device("cpu"))
    text = F.normalize(torch.ones(3, 2), dim=-1)
    base = {"window": 8, "stride": 4, "short_side": 8, "logit_scale": 40}
    pred = S.predict(model, img01, text, [0, 1, 2], 3, {**base, "prob_thd": 0.5, "background": True}, MEAN, STD)
    assert (pred == 0).all()
    text2 = F.normalize(torch.tensor([[1.0, -1.0], [1.0, 1.0], [1.0, 0.0]]), dim=-1)
    pred = S.predict(model, img01, text2, [0, 1, 2], 3, {**base, "prob_thd": 0.5, "background": True}, MEAN, STD)
    assert (pred == 1).all()  # confident class 1 survives the threshold
    pred = S.predict(model, img01, text2, [0, 1, 2], 3, {**base, "prob_thd": 1.01, "background": False}, MEAN, STD)
    assert (pred == 1).all()  # no background class: the threshold is not applied
