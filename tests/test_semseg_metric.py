"""mIoU scorer (declip.metrics.semseg) against hand-computed confusion counts, and `declip score semseg`."""

import argparse
import json
import math

import numpy as np
import pytest
from PIL import Image

from declip.errors import UserFacingError
from declip.metrics.semseg import ConfusionMatrix, reduce_zero_label, score_folders

# GT / prediction with one ignored pixel; class 3 is in neither (NaN, left out of the mean).
GT = np.array([[0, 0, 1], [1, 2, 255]])
PRED = np.array([[0, 1, 1], [1, 0, 2]])


def test_hand_computed_iou_absent_class_and_ignore():
    cm = ConfusionMatrix(4)
    cm.update(PRED, GT)
    s = cm.scores()
    # valid pixels: gt 0 0 1 1 2 / pred 0 1 1 1 0
    # class 0: inter 1, gt 2, pred 2 -> 1/3; class 1: inter 2, gt 2, pred 3 -> 2/3; class 2: 0/1; class 3: NaN
    assert s["IoU"][0] == pytest.approx(100 / 3)
    assert s["IoU"][1] == pytest.approx(200 / 3)
    assert s["IoU"][2] == 0.0
    assert math.isnan(s["IoU"][3])
    assert s["mIoU"] == pytest.approx((100 / 3 + 200 / 3 + 0) / 3)
    assert s["aAcc"] == pytest.approx(60.0)


def test_dataset_level_accumulation_is_not_a_mean_of_images():
    cm = ConfusionMatrix(2)
    cm.update(np.array([[0, 0, 0, 0]]), np.array([[0, 0, 0, 1]]))  # image IoU: c0 3/4, c1 0
    cm.update(np.array([[1]]), np.array([[1]]))  # image IoU: c0 NaN, c1 1
    s = cm.scores()
    # pooled: c0 inter 3, union 4 -> 75; c1 inter 1, gt 2, pred 1 -> union 2 -> 50
    assert s["IoU"] == pytest.approx([75.0, 50.0])
    assert s["mIoU"] == pytest.approx(62.5)
    assert s["aAcc"] == pytest.approx(80.0)


def test_reduce_zero_label():
    gt = np.array([[0, 1, 2], [3, 255, 1]])
    assert reduce_zero_label(gt).tolist() == [[255, 0, 1], [2, 255, 0]]
    cm = ConfusionMatrix(3, reduce_zero_label=True)
    cm.update(np.array([[2, 0, 1], [2, 0, 1]]), gt)
    # kept pixels: gt 0 1 2 0 / pred 0 1 2 1 -> c0 1/2, c1 1/2, c2 1/1
    assert cm.scores()["IoU"] == pytest.approx([50.0, 50.0, 100.0])


def test_prediction_outside_range_counts_as_miss_and_bad_gt_is_an_error():
    cm = ConfusionMatrix(2)
    cm.update(np.array([7, 1]), np.array([0, 1]))
    assert cm.scores()["IoU"] == pytest.approx([0.0, 100.0])
    with pytest.raises(UserFacingError, match="outside"):
        cm.update(np.array([0]), np.array([5]))


def _parser():
    from declip.cli import score

    p = argparse.ArgumentParser()
    score.add_arguments(p)
    return p, score


def _write(folder, name, arr, palette=False):
    folder.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(arr.astype(np.uint8))
    if palette:  # VOC-style palette PNGs must be read as indices, not colours
        im = im.convert("P")
        im.putpalette([v for i in range(256) for v in (i * 7 % 256, i * 13 % 256, i * 29 % 256)])
    im.save(folder / name)


def test_cli_on_png_folders(tmp_path, capsys):
    _write(tmp_path / "gt", "a.png", GT, palette=True)
    _write(tmp_path / "pred", "a.png", PRED)
    parser, score = _parser()
    args = parser.parse_args(["semseg", "--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred"),
                              "--num-classes", "4"])
    result = score.run(args, {})
    printed = json.loads(capsys.readouterr().out)
    assert printed["mIoU"] == pytest.approx(100 / 3)
    assert printed["per_class"]["3"] is None
    assert result["metrics"]["aAcc"] == pytest.approx(60.0)


def test_cli_lists_missing_predictions(tmp_path):
    _write(tmp_path / "gt", "a.png", GT)
    _write(tmp_path / "gt", "b.png", GT)
    _write(tmp_path / "pred", "a.png", PRED)
    with pytest.raises(UserFacingError, match="b.png"):
        score_folders(tmp_path / "gt", tmp_path / "pred", 4)
