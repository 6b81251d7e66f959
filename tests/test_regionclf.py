"""Region classification (declip.evaluate.regionclf) on a constructed panoptic image with a known answer.

The fake dense model's map is a function of the ground truth: each token is the fraction of its pixels
showing each class colour (one-hot classes = one-hot text embeddings), and its crop embedding is the
class colour at the centre of the crop's content. Every classifier must then be right on every segment.
"""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from declip.data.panoptic import read_panoptic
from declip.evaluate import regionclf as R
from declip.models.dense import DenseOutput

MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
PALETTE = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.9, 0.1], [0.1, 0.1, 0.9], [0.9, 0.9, 0.1]])  # class colours
CATS = [{"id": 3, "name": "cup", "isthing": 1}, {"id": 5, "name": "ball", "isthing": 1},
        {"id": 8, "name": "sky", "isthing": 0}, {"id": 9, "name": "grass", "isthing": 0}]


class FakeDense(torch.nn.Module):
    patch_size = 4

    def _onehot(self, x):
        x01 = x * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
        d = ((x01[:, None] - PALETTE.view(1, 4, 3, 1, 1)) ** 2).sum(2)  # (B, K, H, W)
        near = d.min(1, keepdim=True).values < 0.01
        return (d == d.min(1, keepdim=True).values).float() * near

    def forward(self, x):
        return DenseOutput(content=F.avg_pool2d(self._onehot(x), self.patch_size), context=None)

    def encode_image(self, x):
        oh = self._onehot(x)
        feats = []
        for m in oh:  # the crop's content = its non-padding pixels; take the colour at their box centre
            ys, xs = torch.nonzero(m.sum(0) > 0, as_tuple=True)
            feats.append(m[:, (ys.min() + ys.max()) // 2, (xs.min() + xs.max()) // 2])
        return F.normalize(torch.stack(feats), dim=-1)


class FakeModel:
    def __init__(self, perm=(0, 1, 2, 3)):
        self.dense, self.device, self.perm = FakeDense(), torch.device("cpu"), list(perm)

    def text(self, names, template_set):
        assert template_set == "vild" and len(names) == 4
        return torch.eye(4)[self.perm], list(range(4))


def _build(tmp_path):
    """32x32 image: sky top half, grass bottom half, a cup and a ball (8x8) and a 2x2 ball (too small)."""
    ids = np.zeros((32, 32), np.int64)
    ids[:16], ids[16:] = 801, 901
    ids[8:16, 8:16] = 301  # cup, rows 8-15, cols 8-15
    ids[20:28, 18:26] = 501  # ball
    ids[2:4, 26:28] = 502  # tiny ball, w*h = 4 < 4^2: skipped
    colour = {301: 0, 501: 1, 502: 1, 801: 2, 901: 3}
    img = np.zeros((32, 32, 3), np.uint8)
    for sid, k in colour.items():
        img[ids == sid] = (PALETTE[k].numpy() * 255).round().astype(np.uint8)
    (tmp_path / "val").mkdir()
    (tmp_path / "annotations" / "panoptic_val").mkdir(parents=True)
    Image.fromarray(img).save(tmp_path / "val" / "000000.png")
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "annotations" / "panoptic_val" / "000000.png")
    segs = []
    for sid, cat in ((301, 3), (501, 5), (502, 5), (801, 8), (901, 9)):
        ys, xs = np.nonzero(ids == sid)
        bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
        segs.append({"id": sid, "category_id": cat, "bbox": bbox, "area": int((ids == sid).sum()), "iscrowd": 0})
    ann = {"images": [{"id": 0, "file_name": "000000.png", "width": 32, "height": 32}],
           "annotations": [{"image_id": 0, "file_name": "000000.png", "segments_info": segs}], "categories": CATS}
    (tmp_path / "annotations" / "panoptic_val.json").write_text(json.dumps(ann))
    return read_panoptic(tmp_path / "annotations" / "panoptic_val.json", tmp_path / "annotations" / "panoptic_val",
                         tmp_path / "val")


SETTINGS = {"image_size": 32, "min_segment_size": 4, "thing_crop_scale": 1.5}
STUDENT = {"crop_size": 16, "mean": MEAN, "std": STD}


def test_reader_and_segment_boxes(tmp_path):
    ds = _build(tmp_path)
    assert ds.names == ["cup", "ball", "sky", "grass"] and ds.label_of == {3: 0, 5: 1, 8: 2, 9: 3}
    from declip.data.panoptic import load_segment_ids

    segs = R.image_segments(ds.images[0].segments, load_segment_ids(ds.images[0].png_path), ds.label_of, 4, 1.5)
    assert segs.labels == [0, 1, 2, 3] and segs.isthing == [True, True, False, False]
    assert segs.rois[0] == (8, 8, 16, 16)
    assert segs.crops[0] == (6, 6, 18, 18)  # 1.5x about the centre (12, 12)
    assert segs.crops[1] == (16, 18, 28, 30)
    assert segs.rois[2] == segs.crops[2] == (0, 0, 32, 16)  # stuff: tight box of the mask, pixel edges
    assert segs.masks.shape == (4, 32, 32) and segs.masks[0].sum() == 64


def test_known_answer_all_classifiers_correct(tmp_path):
    ds = _build(tmp_path)
    m = R.evaluate(FakeModel(), ds, SETTINGS, STUDENT, progress=False)
    for clf in R.CLASSIFIERS:
        assert m[clf] == {"thing_top1": 100.0, "thing_top5": 100.0, "stuff_top1": 100.0, "stuff_top5": 100.0}, clf
    assert m["n_segments"] == {"thing": 2, "stuff": 2}
    assert m["chance"]["thing_top1"] == 25.0 and m["chance"]["stuff_top5"] == 100.0


def test_swapped_thing_texts_make_things_wrong(tmp_path):
    ds = _build(tmp_path)
    m = R.evaluate(FakeModel(perm=(1, 0, 2, 3)), ds, SETTINGS, STUDENT, progress=False)
    for clf in R.CLASSIFIERS:
        assert m[clf]["thing_top1"] == 0.0 and m[clf]["stuff_top1"] == 100.0, clf


def test_mean_class_accuracy_is_per_class_then_mean():
    correct = np.array([1, 1, 1, 0, 0, 1], float)
    labels = np.array([0, 0, 0, 0, 1, 1])
    # class 0: 3/4, class 1: 1/2 -> 62.5 (a per-segment mean would give 66.7)
    assert R.mean_class_accuracy(correct, labels) == pytest.approx(62.5)


def test_mask_weights_keep_majority_tokens_and_never_empty():
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, :4, :4] = True  # exactly token (0, 0) of a 2x2 grid
    masks[1, 3:5, 3:5] = True  # a quarter of each of the four tokens: no majority -> coverage weights
    w = R.mask_token_weights(masks, 8, 2, "coverage")
    assert torch.allclose(w[0], torch.tensor([1.0, 0, 0, 0]))
    assert torch.allclose(w[1], torch.full((4,), 0.25))


def test_authors_mask_weights_are_resizelongest_bicubic_above_zero():
    """`authors` = DeCLIP/CLIPSelf: the mask through ResizeLongest(grid) (torchvision bicubic on a tensor,
    antialias off as in torchvision < 0.17), tokens > 0 kept, equal weights, no fallback."""
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(3, 30, 45, dtype=torch.bool)
    masks[0, 5:20, 10:30] = True
    masks[1] = torch.rand(30, 45, generator=g) > 0.7  # ragged: bicubic over/undershoot matters
    # masks[2] stays empty: no fallback, all-zero weights (the authors divide by count + 1e-12)
    grid = 6
    scale = grid / 45
    nh, nw = round(30 * scale), round(45 * scale)
    small = TF.resize(masks.float(), [nh, nw], InterpolationMode.BICUBIC, antialias=False)
    keep = torch.zeros(3, grid, grid)
    keep[:, :nh, :nw] = (small > 0).float()
    want = keep.flatten(1) / (keep.flatten(1).sum(1, keepdim=True) + 1e-12)
    torch.testing.assert_close(R.mask_token_weights(masks, 99, grid, "authors"), want)
    assert R.mask_token_weights(masks, 99, grid)[2].abs().sum() == 0  # authors is the default


def test_pooling_reads_normalised_tokens_when_token_norm(tmp_path):
    """rois / maskpool pool `DenseOutput.pool_map()`: with token_norm the tokens are unit vectors first."""
    from declip.evaluate.regionclf import ImageSegments

    content = torch.rand(1, 4, 8, 8, generator=torch.Generator().manual_seed(3)) * 5

    class Dense(torch.nn.Module):
        def __init__(self, norm):
            super().__init__()
            self.norm = norm

        def forward(self, x):
            return DenseOutput(content=content, context=None, token_norm=self.norm)

    segs = ImageSegments([0], [True], [(0.0, 0.0, 16.0, 16.0)], [(0.0, 0.0, 16.0, 16.0)],
                         np.pad(np.ones((16, 16), bool), ((0, 16), (0, 16)))[None])
    img = torch.rand(3, 32, 32)
    for norm in (False, True):
        model = type("M", (), {"dense": Dense(norm), "device": torch.device("cpu")})()
        feats = R.classify_image(model, img, segs, ("rois", "maskpool"), 32, 16, MEAN, STD)
        tokens = F.normalize(content[0], dim=0) if norm else content[0]
        want = F.normalize(tokens[:, :4, :4].mean(dim=(1, 2)), dim=0)  # the box / mask covers tokens 0-3 x 0-3
        torch.testing.assert_close(feats["rois"][0], want, atol=1e-5, rtol=0)
        torch.testing.assert_close(feats["maskpool"][0], want, atol=1e-5, rtol=0)
