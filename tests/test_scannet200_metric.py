"""ScanNet200 instance AP on hand-built scenes (values computed by hand from the benchmark's rules)."""

import argparse
import json
import math

import numpy as np
import pytest

from declip.data.scannet200 import CLASS_IDS, ID_OF, INSTANCE_CLASS_IDS, SPLIT_OF, split_names
from declip.metrics import scannet200 as m

CHAIR, TABLE, WALL, FLOOR = ID_OF["chair"], ID_OF["table"], ID_OF["wall"], ID_OF["floor"]


def scene(*parts):
    """GT ids from (id, count) runs."""
    return np.concatenate([np.full(n, i, dtype=np.int64) for i, n in parts])


def mask_of(gt, *ids):
    return np.isin(gt, ids)


def test_class_tables_match_the_benchmark():
    assert len(CLASS_IDS) == 200 and len(INSTANCE_CLASS_IDS) == 198
    assert WALL not in INSTANCE_CLASS_IDS and FLOOR not in INSTANCE_CLASS_IDS
    assert [len(split_names(s)) for s in ("head", "common", "tail")] == [66, 68, 66]
    assert (ID_OF["bucket"], ID_OF["clock"], ID_OF["ball"], ID_OF["fire extinguisher"]) == (102, 103, 168, 166)
    assert SPLIT_OF["bottle"] == "common" and SPLIT_OF["ball"] == "tail"


def test_overlaps_are_the_benchmark_ones():
    assert len(m.OVERLAPS) == 10 and m.OVERLAPS[-1] == 0.25
    assert np.allclose(m.OVERLAPS[:9], [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9])


def test_perfect_predictions_score_100():
    gt = scene((CHAIR * 1000 + 1, 150), (TABLE * 1000 + 2, 200), (ID_OF["ball"] * 1000 + 3, 120), (WALL * 1000 + 4, 300))
    preds = [m.Prediction(mask_of(gt, CHAIR * 1000 + 1), CHAIR, 1.0),
             m.Prediction(mask_of(gt, TABLE * 1000 + 2), TABLE, 1.0),
             m.Prediction(mask_of(gt, ID_OF["ball"] * 1000 + 3), ID_OF["ball"], 1.0)]
    out = m.to_percent(m.evaluate({"s": gt}, {"s": preds}))
    for key in ("AP", "AP50", "AP25", "AP_head", "AP_tail"):
        assert out[key] == 100.0
    assert out["AP_common"] is None  # no common-class GT: NaN, left out
    assert out["per_class"]["bottle"]["AP"] is None


def test_missing_instance_halves_recall():
    gt = scene((CHAIR * 1000 + 1, 150), (CHAIR * 1000 + 2, 150))
    out = m.evaluate({"s": gt}, {"s": [m.Prediction(mask_of(gt, CHAIR * 1000 + 1), CHAIR, 1.0)]})
    # one TP, one hard FN: curve (r=0.5, p=1) then (0, 1): area 0.5
    assert out["AP"] == pytest.approx(0.5) and out["AP25"] == pytest.approx(0.5)


@pytest.mark.parametrize("fp_conf, expected", [(0.5, 1.0), (0.95, 0.25)])
def test_false_positive_ranked_below_or_above_the_true_one(fp_conf, expected):
    gt = scene((CHAIR * 1000 + 1, 150), (TABLE * 1000 + 2, 150))
    preds = [m.Prediction(mask_of(gt, CHAIR * 1000 + 1), CHAIR, 0.9),
             m.Prediction(mask_of(gt, TABLE * 1000 + 2), CHAIR, fp_conf)]  # wrong class on the table
    out = m.evaluate({"s": gt}, {"s": preds})
    assert out["per_class"]["chair"]["AP"] == pytest.approx(expected)
    assert out["per_class"]["table"]["AP"] == 0.0  # GT without a prediction


def test_partial_overlap_counts_only_below_its_iou():
    gt = scene((CHAIR * 1000 + 1, 200), (0, 200))
    pred = np.zeros(len(gt), bool)
    pred[:140] = True  # IoU 0.7 with the chair
    out = m.evaluate({"s": gt}, {"s": [m.Prediction(pred, CHAIR, 1.0)]})
    ap = out["per_class"]["chair"]
    # matched at 0.50..0.65 (4 of the 9 thresholds; 0.70 needs IoU > 0.7), unmatched and a FP above
    assert ap["AP50"] == 1.0 and ap["AP25"] == 1.0 and ap["AP"] == pytest.approx(4 / 9)


def test_small_regions_are_not_counted():
    gt = scene((CHAIR * 1000 + 1, 50), (TABLE * 1000 + 2, 150))
    preds = [m.Prediction(mask_of(gt, CHAIR * 1000 + 1), CHAIR, 1.0),  # 50 vertices: dropped
             m.Prediction(mask_of(gt, TABLE * 1000 + 2), TABLE, 1.0)]
    out = m.evaluate({"s": gt}, {"s": preds})
    assert math.isnan(out["per_class"]["chair"]["AP"])  # the only chair GT is below 100 vertices
    assert out["AP"] == 1.0
    # A prediction mostly on a too-small chair: IoU 90/110 = 0.82 with it, so it is "found" up to 0.80; above,
    # its ignored share 0.82 is not above 0.85/0.90 and it becomes a FP ranked over the true chair (AP 0.25).
    gt2 = scene((CHAIR * 1000 + 1, 90), (TABLE * 1000 + 2, 150), (CHAIR * 1000 + 3, 150))
    covering = mask_of(gt2, CHAIR * 1000 + 1)
    covering[90:110] = True  # + 20 table vertices
    preds2 = [m.Prediction(covering, CHAIR, 1.0), m.Prediction(mask_of(gt2, CHAIR * 1000 + 3), CHAIR, 0.5)]
    out2 = m.evaluate({"s": gt2}, {"s": preds2})["per_class"]["chair"]
    assert out2["AP"] == pytest.approx((7 * 1.0 + 2 * 0.25) / 9) and out2["AP50"] == 1.0


def test_void_and_non_instance_labels_are_ignored():
    gt = scene((CHAIR * 1000 + 1, 150), (WALL * 1000 + 2, 300), (0, 200))
    preds = [m.Prediction(mask_of(gt, CHAIR * 1000 + 1), CHAIR, 0.5),
             m.Prediction(mask_of(gt, WALL * 1000 + 2), CHAIR, 0.9),  # on the wall (void): not a false positive
             m.Prediction(mask_of(gt, 0), CHAIR, 0.9),  # on unannotated vertices: not a false positive
             m.Prediction(mask_of(gt, CHAIR * 1000 + 1), WALL, 1.0)]  # wall is not a scored class: dropped
    out = m.evaluate({"s": gt}, {"s": preds})
    assert out["AP"] == 1.0 and "wall" not in out["per_class"]


def test_duplicate_detection_is_a_false_positive():
    gt = scene((CHAIR * 1000 + 1, 150))
    preds = [m.Prediction(mask_of(gt, CHAIR * 1000 + 1), CHAIR, 0.4),
             m.Prediction(mask_of(gt, CHAIR * 1000 + 1), CHAIR, 0.8)]
    # the GT keeps 0.8, the 0.4 duplicate is a FP below it: precision 1 at recall 1
    assert m.evaluate({"s": gt}, {"s": preds})["AP"] == pytest.approx(1.0)


def test_wall_and_floor_labels_are_not_written_and_scores_are_unchanged(tmp_path):
    gt = scene((CHAIR * 1000 + 1, 150), (TABLE * 1000 + 2, 150), (FLOOR * 1000 + 3, 100))
    preds = [m.Prediction(mask_of(gt, CHAIR * 1000 + 1), CHAIR, 1.0),
             m.Prediction(mask_of(gt, TABLE * 1000 + 2), FLOOR, 1.0),  # a 200-class vocabulary can say floor
             m.Prediction(mask_of(gt, FLOOR * 1000 + 3), WALL, 0.5)]
    path = m.write_predictions(tmp_path / "pred", "scene0000_00", preds)
    lines = path.read_text().splitlines()
    assert lines == [f"pred_mask/scene0000_00_0.txt {CHAIR} 1.000000"]
    back = m.read_predictions(path)  # accepted by the strict reader
    a, b = m.evaluate({"s": gt}, {"s": back}), m.evaluate({"s": gt}, {"s": preds})  # the official rule drops them too
    for k in ("AP", "AP50", "AP25", "AP_head", "AP_common", "AP_tail"):
        np.testing.assert_equal(a[k], b[k])
    assert a["AP"] == 0.5  # chair found; table missed (its mask went to floor)


def test_benchmark_files_round_trip_and_cli(tmp_path, capsys):
    gt = scene((CHAIR * 1000 + 1, 150), (TABLE * 1000 + 2, 150), (FLOOR * 1000 + 3, 100))
    (tmp_path / "gt").mkdir()
    np.savetxt(tmp_path / "gt" / "scene0000_00.txt", gt, fmt="%d")
    preds = [m.Prediction(mask_of(gt, CHAIR * 1000 + 1), CHAIR, 1.0), m.Prediction(mask_of(gt, TABLE * 1000 + 2), CHAIR, 0.3)]
    m.write_predictions(tmp_path / "pred", "scene0000_00", preds)
    lines = (tmp_path / "pred" / "scene0000_00.txt").read_text().split("\n")
    assert lines[0] == f"pred_mask/scene0000_00_0.txt {CHAIR} 1.000000"
    back = m.read_predictions(tmp_path / "pred" / "scene0000_00.txt")
    assert all((a.mask == b.mask).all() and a.label_id == b.label_id for a, b in zip(back, preds))
    out = m.main(argparse.Namespace(gt=str(tmp_path / "gt"), pred=str(tmp_path / "pred")))
    printed = json.loads(capsys.readouterr().out)
    assert printed["AP"] == out["AP"] == 50.0  # chair 100, table 0
