"""OVD family: F-ViT's score ensembling and loss, the simple pyramid, augmentation, NMS, the data reader,
the OV-COCO split files and the ovd table. Expected values are computed independently in each test."""

from __future__ import annotations

import json
import math

import pytest
import torch

from declip.data import detection
from declip.errors import UserFacingError
from declip.evaluate import fvit, ovd


def test_ensemble_rule_matches_fvit_formula():
    learned = torch.tensor([[0.0, 1.0, 2.0]])  # background, base class, novel class
    vlm = torch.tensor([[1.0, 0.0, 3.0]])
    novel = torch.tensor([False, False, True])
    out = fvit.ensemble_scores(learned, vlm, novel, alpha=0.1, beta=0.8)
    p = [math.exp(v) / sum(math.exp(u) for u in (0.0, 1.0, 2.0)) for v in (0.0, 1.0, 2.0)]
    v = [math.exp(x) / sum(math.exp(u) for u in (1.0, 0.0, 3.0)) for x in (1.0, 0.0, 3.0)]
    expected = [p[0] ** 0.9 * v[0] ** 0.1, p[1] ** 0.9 * v[1] ** 0.1, p[2] ** 0.2 * v[2] ** 0.8]
    assert out[0].tolist() == pytest.approx(expected, rel=1e-5)


def test_weighted_ce_masks_novel_and_weights_background():
    logits = torch.tensor([[2.0, 0.5, 1.0, 3.0], [0.0, 1.0, 0.0, 5.0]])  # bg, base, base, novel
    labels = torch.tensor([0, 2])
    weight = torch.tensor([0.2, 1.0, 1.0, 0.0])
    got = fvit.weighted_ce(logits, labels, weight)

    def ce(row, y):  # softmax over the non-novel columns only
        z = [math.exp(x) for x in row[:3]]
        return -math.log(z[y] / sum(z))

    expected = (0.2 * ce([2.0, 0.5, 1.0], 0) + 1.0 * ce([0.0, 1.0, 0.0], 2)) / 2
    assert float(got) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("patch,grid,sizes", [(8, 12, [24, 12, 6, 3, 2]), (16, 8, [32, 16, 8, 4, 2])])
def test_simple_pyramid_levels(patch, grid, sizes):
    fpn = fvit.SimpleFPN(16, 8, patch)
    out = fpn(torch.randn(1, 16, grid, grid))
    assert list(out) == ["p2", "p3", "p4", "p5", "pool"]
    assert [t.shape[-1] for t in out.values()] == sizes
    assert all(t.shape[1] == 8 for t in out.values())


def test_jitter_identity_and_flip():
    img = torch.rand(3, 48, 96)
    boxes = torch.tensor([[10.0, 5.0, 30.0, 25.0]])
    gen = torch.Generator().manual_seed(0)
    out, b, keep = ovd.jitter(img, boxes, 96, (1.0, 1.0), False, gen)
    assert out.shape == (3, 96, 96) and keep.all()
    assert b.tolist() == [[10.0, 5.0, 30.0, 25.0]]  # long side already 96: unchanged
    out2, b2, _ = ovd.jitter(img, boxes, 96, (1.0, 1.0), True, gen)
    assert b2.tolist() == [[66.0, 5.0, 86.0, 25.0]]
    assert torch.equal(out2, out.flip(-1))
    _, b3, _ = ovd.jitter(img, boxes, 96, (0.5, 0.5), False, gen)
    assert b3.tolist() == [[5.0, 2.5, 15.0, 12.5]]


def test_postprocess_per_class_nms_threshold_and_cap():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 60, 60]], dtype=torch.float32)
    # columns: background, class 1, class 2
    scores = torch.tensor([[0.1, 0.9, 0.3], [0.1, 0.8, 0.005], [0.1, 0.02, 0.7]])
    s = {"score_thr": 0.01, "nms": 0.4, "max_per_img": 100}
    r = fvit.postprocess(boxes, scores, [3], [(64, 64)], s)[0]
    got = sorted(zip(r["labels"].tolist(), [round(x, 3) for x in r["scores"].tolist()]))
    # class 1: box 1 suppressed by box 0 (IoU 0.81), box 2 kept (0.02 > 0.01); class 2: box 1 under threshold
    assert got == [(1, 0.02), (1, 0.9), (2, 0.3), (2, 0.7)]
    r = fvit.postprocess(boxes, scores, [3], [(64, 64)], {**s, "max_per_img": 2})[0]
    assert sorted(r["scores"].tolist()) == pytest.approx([0.7, 0.9])


def _coco(tmp_path, name="instances_val.json"):
    gt = {"images": [{"id": 1, "file_name": "a.png", "width": 20, "height": 20},
                     {"id": 2, "file_name": "b.png", "width": 20, "height": 20}],
          "categories": [{"id": 1, "name": "person"}, {"id": 5, "name": "cat"}, {"id": 9, "name": "zebra"},
                         {"id": 90, "name": "hair drier"}],
          "annotations": [
              {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "area": 25, "iscrowd": 0},
              {"id": 2, "image_id": 1, "category_id": 5, "bbox": [5, 5, 5, 5], "area": 25, "iscrowd": 0},
              {"id": 3, "image_id": 2, "category_id": 1, "bbox": [0, 0, 9, 9], "area": 81, "iscrowd": 1},
              {"id": 4, "image_id": 2, "category_id": 90, "bbox": [1, 1, 3, 3], "area": 9, "iscrowd": 0}]}
    (tmp_path / "annotations").mkdir(exist_ok=True)
    (tmp_path / "annotations" / name).write_text(json.dumps(gt))
    return gt


def test_reader_drops_crowd_and_novel(tmp_path):
    _coco(tmp_path)
    spec = {"root": str(tmp_path), "split": "val", "format": "mini2d"}
    full = detection.read_detection(spec)
    assert [im.category_ids for im in full.images] == [[1, 5], [90]]  # the crowd box is not a training box
    data = detection.drop_categories(full, {"cat"})
    assert [im.boxes for im in data.images] == [[[0, 0, 5, 5]], [[1, 1, 4, 4]]]
    assert data.images[0].path == tmp_path / "val" / "a.png"
    base, novel = detection.split_names({"novel": ["cat"], "scorer": "ovcoco"}, data.categories)
    assert novel == ("cat",) and base == ("person", "zebra", "hair drier")
    with pytest.raises(UserFacingError, match="dog"):
        detection.split_names({"novel": ["dog"], "scorer": "ovcoco"}, data.categories)
    lvis_cats = [{"name": "a", "frequency": "r"}, {"name": "b", "frequency": "f"}]
    assert detection.split_names({"scorer": "lvis"}, lvis_cats) == (("b",), ("a",))


def test_ovcoco_split_file(tmp_path, monkeypatch):
    from declip.metrics import ovcoco

    # A COCO file must hold all 65 split categories: rename the tiny file's categories onto the split.
    gt = _coco(tmp_path, "instances_val2017.json")
    cats = [{"id": 100 + i, "name": n} for i, n in enumerate(ovcoco.OVCOCO_BASE + ovcoco.OVCOCO_NOVEL)]
    gt["categories"] = cats + [{"id": 90, "name": "hair drier"}]
    gt["annotations"][0]["category_id"] = 100  # person (base)
    gt["annotations"][1]["category_id"] = 100 + ovcoco.OVCOCO_BASE.index("bottle")
    gt["annotations"][2]["category_id"] = 100 + 48  # airplane (novel), crowd
    src = tmp_path / "instances_val2017.json"
    src.write_text(json.dumps(gt))
    counts = detection.ovcoco_split(src, tmp_path / "out" / "base.json", "base")
    base = json.loads((tmp_path / "out" / "base.json").read_text())
    assert counts == {"images": 1, "annotations": 2, "categories": 65}
    assert {a["id"] for a in base["annotations"]} == {1, 2}
    counts = detection.ovcoco_split(src, tmp_path / "out" / "all.json", "all")
    assert counts == {"images": 2, "annotations": 3, "categories": 65}  # hair drier is not an OV-COCO class
    gt["categories"] = gt["categories"][1:]
    src.write_text(json.dumps(gt))
    with pytest.raises(UserFacingError, match="person"):
        detection.ovcoco_split(src, tmp_path / "x.json", "all")


def test_detector_trains_and_detects_on_random_weights():
    from declip.config import load
    from declip.models.clip import create_clip
    from declip.models.dense import DenseCLIP

    cfg = load()
    torch.manual_seed(0)
    dense = DenseCLIP(create_clip(cfg["student"]), dense_mode="vanilla").eval()
    d = cfg["evaluate"]["ovd"]["detector"]
    model = fvit.FViT(dense, torch.nn.functional.normalize(torch.randn(4, 64), dim=-1),
                      torch.tensor([False, False, True]), d)
    assert not any(p.requires_grad for p in model.dense.parameters())
    assert all(not k.startswith("dense.") for k in model.trainable_state())
    model.train()
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 40.0, 40.0]]), "labels": torch.tensor([1])}] * 2
    losses = model(torch.randn(2, 3, 96, 96), targets)
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 96, 96))[0]
    assert out["boxes"].shape[1] == 4 and len(out["boxes"]) <= d["max_per_img"]
    assert (out["labels"] >= 1).all() and (out["labels"] <= 3).all()


def test_ovd_table_rows_peers_and_paper_deltas(tmp_path):
    from declip.tables.render import render_tables

    def write(mode, variant, values):
        p = tmp_path / "eval" / "ovd" / "coco_ov_val2017" / mode / variant / "metrics.json"
        p.parent.mkdir(parents=True)
        p.write_text(json.dumps({"scorer": "ovcoco", **values}))

    write("detector", "declip", {"AP50_novel": 40.0, "AP50_base": 50.0, "AP50_all": 47.0})
    write("boxclf", "declip", {"AP50_novel": 30.0, "AP50_base": 35.0, "AP50_all": 33.0})
    cfg = {"preset": "paper-b16", "evaluate": {"ovd": {"dataset": "coco_ov_val2017", "modes": ["detector", "boxclf"]}},
           "tables": {"ovd_variants": ["declip"]}}
    render_tables(tmp_path / "eval", tmp_path / "tables", table_ids=["ovd"], cfg=cfg)
    import csv

    rows = list(csv.DictReader(open(tmp_path / "tables" / "ovd.csv")))
    det = next(r for r in rows if r["mode"] == "detector")
    box = next(r for r in rows if r["mode"] == "boxclf")
    assert float(det["AP50_novel"]) == 40.0 and float(det["AP50_novel.paper"]) == 41.1
    assert float(det["AP50_novel.delta"]) == pytest.approx(-1.1)
    assert box["AP50_novel.paper"] == ""  # no published training-free number
    peers = {r["variant"]: r for r in rows if r["protocol"] == "paper"}
    assert float(peers["OV-DQUO+DeCLIP ViT-L/14 (paper)"]["APr.paper"]) == 41.5
    assert float(peers["F-ViT+CLIPSelf ViT-B/16 (paper)"]["AP50_novel.paper"]) == 37.6
    md = (tmp_path / "tables" / "ovd.md").read_text()
    assert "coco_ov_val2017" in md and "detector" in md
