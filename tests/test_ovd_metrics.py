"""OV-COCO and LVIS scorers on hand-made files; expected values computed by hand (101-point COCO AP)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from declip.errors import UserFacingError
from declip.metrics import lvis_ap, ovcoco


def _ann(i, img, cat, box, crowd=0):
    return {"id": i, "image_id": img, "category_id": cat, "bbox": box, "area": box[2] * box[3], "iscrowd": crowd}


def _det(img, cat, box, score):
    return {"image_id": img, "category_id": cat, "bbox": box, "score": score}


@pytest.fixture
def coco_gt():
    # "cat" and "dog" are OV-COCO novel, "person" base; "dog" has no ground truth at all.
    return {
        "images": [{"id": 1, "width": 200, "height": 200}, {"id": 2, "width": 200, "height": 200}],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "person"}, {"id": 3, "name": "dog"}],
        "annotations": [
            _ann(1, 1, 1, [0, 0, 40, 40]), _ann(2, 2, 1, [100, 100, 40, 40]),
            _ann(3, 1, 2, [100, 0, 50, 50]), _ann(4, 1, 2, [0, 120, 60, 60], crowd=1),
        ],
    }


def _dets():
    return [
        _det(1, 1, [0, 0, 40, 40], 0.9),       # cat TP
        _det(1, 1, [150, 150, 30, 30], 0.8),   # cat FP
        _det(2, 1, [100, 100, 40, 40], 0.7),   # cat TP
        _det(1, 2, [0, 120, 60, 60], 0.95),    # person on the crowd region: ignored, not a FP
        _det(1, 2, [100, 0, 50, 50], 0.6),     # person TP
        _det(2, 3, [10, 10, 20, 20], 0.99),    # dog: no ground truth -> category left out
    ]


# cat: TP, FP, TP over 2 GT -> precision 1 up to recall 0.5, then 2/3: 101-point AP = (51 + 50 * 2/3) / 101.
CAT_AP = (51 + 50 * 2 / 3) / 101 * 100


def test_ovcoco_groups_crowd_and_missing_gt(coco_gt):
    out = ovcoco.score_loaded(coco_gt, _dets())
    assert out["AP50_novel"] == pytest.approx(CAT_AP)
    assert out["AP50_base"] == pytest.approx(100.0)  # the crowd match did not cost precision
    assert out["AP50_all"] == pytest.approx((CAT_AP + 100.0) / 2)
    assert out["per_category_AP50"]["dog"] is None
    assert out["n_categories"] == {"novel": 1, "base": 1, "all": 2}


def test_ovcoco_max_dets_keeps_top_scores_per_image(coco_gt):
    # One detection per image and category: cat keeps the 0.9 TP on image 1 and the 0.7 TP on image 2.
    out = ovcoco.score_loaded(coco_gt, _dets(), max_dets=1)
    assert out["AP50_novel"] == pytest.approx(100.0)


def test_ovcoco_empty_and_bad_input(coco_gt, tmp_path):
    empty = ovcoco.score_loaded(coco_gt, [])
    assert empty["AP50_novel"] == 0.0 and empty["AP50_base"] == 0.0
    ids, cats = {1, 2}, {1, 2, 3}
    with pytest.raises(UserFacingError, match="image_id 7"):
        ovcoco.check_detections([_det(7, 1, [0, 0, 1, 1], 1.0)], ids, cats, "p.json")
    with pytest.raises(UserFacingError, match="category_id 9"):
        ovcoco.check_detections([_det(1, 9, [0, 0, 1, 1], 1.0)], ids, cats, "p.json")
    with pytest.raises(UserFacingError, match="bbox"):
        ovcoco.check_detections([_det(1, 1, [0, 0, 1], 1.0)], ids, cats, "p.json")
    with pytest.raises(UserFacingError, match="ground-truth file"):
        ovcoco.check_detections(coco_gt, ids, cats, "p.json")


def test_ovcoco_split_lists_match_fvit():
    assert len(ovcoco.OVCOCO_BASE) == 48 and len(ovcoco.OVCOCO_NOVEL) == 17
    assert not set(ovcoco.OVCOCO_BASE) & set(ovcoco.OVCOCO_NOVEL)


def test_score_cli_prints_json_and_errors_cleanly(coco_gt, tmp_path):
    gt, pred = tmp_path / "gt.json", tmp_path / "pred.json"
    gt.write_text(json.dumps(coco_gt))
    pred.write_text(json.dumps(_dets()))
    run = subprocess.run([sys.executable, "-m", "declip.cli", "score", "ovcoco", "--gt", str(gt), "--pred", str(pred)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["AP50_novel"] == pytest.approx(CAT_AP)
    pred.write_text(json.dumps([_det(5, 1, [0, 0, 1, 1], 1.0)]))
    run = subprocess.run([sys.executable, "-m", "declip.cli", "score", "ovcoco", "--gt", str(gt), "--pred", str(pred)],
                         capture_output=True, text=True)
    assert run.returncode == 1 and "image_id 5" in run.stderr and "Traceback" not in run.stderr


# ------------------------------------------------------------------ LVIS

def _lvis_gt():
    return {
        "images": [{"id": 1, "width": 200, "height": 200, "neg_category_ids": [], "not_exhaustive_category_ids": []},
                   {"id": 2, "width": 200, "height": 200, "neg_category_ids": [1], "not_exhaustive_category_ids": []}],
        "categories": [{"id": 1, "name": "r_thing", "frequency": "r"}, {"id": 2, "name": "c_thing", "frequency": "c"},
                       {"id": 3, "name": "f_thing", "frequency": "f"}],
        "annotations": [
            {**_ann(1, 1, 1, [0, 0, 40, 40]), "segmentation": [[0, 0, 0, 40, 40, 40, 40, 0]]},
            {**_ann(2, 1, 2, [100, 100, 40, 40]), "segmentation": [[100, 100, 100, 140, 140, 140, 140, 100]]},
            {**_ann(3, 2, 3, [50, 50, 40, 40]), "segmentation": [[50, 50, 50, 90, 90, 90, 90, 50]]},
        ],
    }


def test_lvis_frequency_groups_and_federated_ignores():
    dets = [
        _det(2, 1, [0, 0, 40, 40], 0.95),     # r on image 2, where r is a verified negative: a FP
        _det(1, 1, [0, 0, 40, 40], 0.9),      # r TP  -> r precision 1/2 at recall 1: AP 0.5
        _det(2, 2, [0, 0, 40, 40], 0.99),     # c on image 2: neither positive nor negative there -> ignored
        _det(1, 2, [100, 100, 40, 40], 0.8),  # c TP  -> AP 1
    ]                                         # f: no detection -> AP 0
    out = lvis_ap.score_loaded(_lvis_gt(), dets)
    assert out["APr"] == pytest.approx(50.0)
    assert out["APc"] == pytest.approx(100.0)
    assert out["APf"] == pytest.approx(0.0)
    assert out["AP50"] == pytest.approx(50.0)


def test_lvis_shim_in_one_place():
    import numpy as np

    mod = lvis_ap.import_lvis()
    assert np.float is float  # the alias lvis 0.5.3 eval.py needs
    assert hasattr(mod, "LVISEval")


def test_lvis_bad_input():
    gt = _lvis_gt()
    assert lvis_ap.score_loaded(gt, [])["APr"] == 0.0
    bad = dict(gt, categories=[{"id": 1, "name": "x"}])
    with pytest.raises(UserFacingError, match="frequency"):
        lvis_ap.check_lvis_ground_truth(bad, "gt.json")
    assert not math.isnan(lvis_ap.score_loaded(gt, [_det(1, 3, [0, 0, 5, 5], 0.5)])["AP"])
