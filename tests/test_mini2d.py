"""The mini 2D world: COCO-format consistency (instances, panoptic, semantic), captions, determinism."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from declip import config
from declip.data import mini2d, render2d
from declip.data.panoptic import load_segment_ids
from declip.data.vocab import CATEGORIES, THINGS

SMALL = {"mini": {"world2d": {"seed": 3, "image_size": 64, "n_train": 8, "n_val": 4, "n_single": 20}}}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    cfg = config.load(overrides=SMALL)
    root = tmp_path_factory.mktemp("mini2d")
    counts = mini2d.generate(cfg, root)
    return cfg, root, counts


def _png(path):
    return np.asarray(Image.open(path))


def test_layout_and_manifest_written_last(world):
    _, root, counts = world
    files = [p for p in root.rglob("*") if p.is_file() and p.name != "MANIFEST.json"]
    for split, n in (("train", 8), ("val", 4), ("single", 20)):
        assert sorted(p.name for p in (root / split).iterdir()) == [f"{i:06d}.png" for i in range(1, n + 1)]
    for split in ("train", "val"):
        for kind in ("instances", "panoptic", "captions"):
            assert (root / "annotations" / f"{kind}_{split}.json").exists()
        assert len(list((root / "semantic" / split).iterdir())) == counts[split]["images"]
    manifest = root / "MANIFEST.json"
    assert manifest.stat().st_mtime_ns >= max(p.stat().st_mtime_ns for p in files)
    assert json.loads(manifest.read_text())["splits"] == json.loads(json.dumps(counts))
    assert _png(root / "train" / "000001.png").shape == (64, 64, 3)


def test_instances_load_in_pycocotools_and_match_panoptic(world):
    from pycocotools.coco import COCO

    _, root, _ = world
    coco = COCO(str(root / "annotations" / "instances_train.json"))
    pan = json.loads((root / "annotations" / "panoptic_train.json").read_text())
    assert sorted(coco.getCatIds()) == [c.id for c in THINGS]
    for entry in pan["annotations"]:
        ids = load_segment_ids(root / "annotations" / "panoptic_train" / entry["file_name"])
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[entry["image_id"]]))
        things = [s for s in entry["segments_info"] if s["category_id"] <= len(THINGS)]
        assert len(anns) == len(things) >= 1
        for ann in anns:
            m = coco.annToMask(ann).astype(bool)
            assert m.sum() == ann["area"] > 0 and ann["iscrowd"] == 0
            ys, xs = np.nonzero(m)
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            # the instance mask is exactly one panoptic segment of the same category
            seg_ids = np.unique(ids[m])
            assert len(seg_ids) == 1 and (ids == seg_ids[0]).sum() == m.sum()
            assert {s["id"]: s["category_id"] for s in things}[int(seg_ids[0])] == ann["category_id"]


def test_panoptic_png_ids_match_segments_info_and_semantic(world):
    _, root, _ = world
    pan = json.loads((root / "annotations" / "panoptic_val.json").read_text())
    isthing = {c["id"]: c["isthing"] for c in pan["categories"]}
    assert isthing == {c.id: int(c.isthing) for c in CATEGORIES}
    for entry in pan["annotations"]:
        ids = load_segment_ids(root / "annotations" / "panoptic_val" / entry["file_name"])
        sem = _png(root / "semantic" / "val" / entry["file_name"])
        infos = {s["id"]: s for s in entry["segments_info"]}
        assert set(np.unique(ids)) - {0} == set(infos)
        assert any(not isthing[s["category_id"]] for s in infos.values())  # stuff is annotated too
        expected = np.full(ids.shape, 255)
        for sid, s in infos.items():
            assert (ids == sid).sum() == s["area"]
            expected[ids == sid] = s["category_id"] - 1
        np.testing.assert_array_equal(sem, expected)


def test_captions_name_every_object_and_the_stuff(world):
    _, root, _ = world
    caps = {a["image_id"]: a["caption"] for a in json.loads((root / "annotations" / "captions_train.json").read_text())["annotations"]}
    pan = json.loads((root / "annotations" / "panoptic_train.json").read_text())
    names = {c["id"]: c["name"] for c in pan["categories"]}
    for entry in pan["annotations"]:
        for s in entry["segments_info"]:
            assert names[s["category_id"]] in caps[entry["image_id"]]


def test_caption_wording():
    assert mini2d.caption(["chair", "lamp", "chair"], ["grass"]) == "a photo of two chairs and a lamp on grass"
    assert mini2d.caption(["ball"], ["sky", "water"]) == "a photo of a ball on water in front of sky"
    assert mini2d.caption(["clock"], ["wall"]) == "a photo of a clock in front of wall"


def test_single_split_is_balanced_and_distinct_from_train(world):
    _, root, _ = world
    single = json.loads((root / "annotations" / "single.json").read_text())
    counts = np.bincount([im["category_id"] for im in single["images"]], minlength=len(THINGS) + 1)[1:]
    assert counts.tolist() == [2] * len(THINGS)
    assert [c["id"] for c in single["categories"]] == [c.id for c in THINGS]
    a, b, c = (_png(root / s / "000001.png") for s in ("train", "val", "single"))
    assert not np.array_equal(a, b) and not np.array_equal(a, c)


def test_same_seed_same_bytes_other_seed_differs(world, tmp_path):
    cfg, root, _ = world
    mini2d.generate(cfg, tmp_path / "again")
    for rel in ("train/000003.png", "annotations/panoptic_val/000002.png", "annotations/instances_train.json",
                "annotations/single.json"):
        assert (root / rel).read_bytes() == (tmp_path / "again" / rel).read_bytes()
    other = config.load(overrides={"mini": {"world2d": {**SMALL["mini"]["world2d"], "seed": 4}}})
    mini2d.generate(other, tmp_path / "other")
    assert (root / "train/000001.png").read_bytes() != (tmp_path / "other/train/000001.png").read_bytes()


def test_shape_masks_have_their_geometric_area():
    size, r = 200, 60.0
    u, v = render2d.local_coords(size, 100, 100, r, 0.0)
    assert render2d.shape_mask("circle", u, v).sum() == pytest.approx(np.pi * r * r, rel=0.01)
    assert render2d.shape_mask("square", u, v).sum() == pytest.approx((1.6 * r) ** 2, rel=0.02)
    assert render2d.shape_mask("diamond", u, v).sum() == pytest.approx(2 * 0.8 * r * r, rel=0.02)  # d1*d2/2
    hexagon = 3 * np.sqrt(3) / 2 * r * r
    assert render2d.shape_mask("hexagon", u, v).sum() == pytest.approx(hexagon, rel=0.02)
    ring = np.pi * r * r * (1 - 0.25)
    assert render2d.shape_mask("ring", u, v).sum() == pytest.approx(ring, rel=0.02)
