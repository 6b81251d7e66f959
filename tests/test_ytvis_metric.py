"""YouTube-VIS scorer on hand-made cases; expected values by hand or by the small independent AP below."""

import json

import numpy as np
import pytest

from declip.metrics import ytvis

H = W = 300


def box(y, x, h, w, size=(H, W)):
    m = np.zeros(size, dtype=bool)
    m[y:y + h, x:x + w] = True
    return m


def uncompressed(mask):
    """YouTube-VIS GT style: column-major runs, starting with a (possibly empty) run of zeros."""
    flat = mask.T.reshape(-1).astype(np.uint8)
    counts, cur, run = [], 0, 0
    for v in flat:
        if v != cur:
            counts.append(run)
            cur, run = v, 0
        run += 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": [int(c) for c in counts]}


def compressed(mask):
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def gt_file(tracks, n_frames, categories=None, with_areas=True):
    """tracks: (video_id, category_id, [mask or None per frame], iscrowd)."""
    vids = sorted({t[0] for t in tracks})
    cats = categories or [{"id": c, "name": f"c{c}"} for c in sorted({t[1] for t in tracks})]
    anns = []
    for k, (vid, cat, frames, crowd) in enumerate(tracks, start=1):
        ann = {"id": k, "video_id": vid, "category_id": cat, "iscrowd": crowd,
               "segmentations": [uncompressed(m) if m is not None else None for m in frames]}
        if with_areas:
            ann["areas"] = [int(m.sum()) if m is not None else None for m in frames]
        anns.append(ann)
    return {"videos": [{"id": v, "height": H, "width": W, "length": n_frames} for v in vids],
            "categories": cats, "annotations": anns}


def result(vid, cat, score, frames):
    return {"video_id": vid, "category_id": cat, "score": score,
            "segmentations": [compressed(m) if m is not None else None for m in frames]}


def interp_ap(is_tp_sorted, n_gt):
    """Independent 101-point interpolated AP (percent): for each recall level r, the best precision
    reached at any recall >= r, 0 when r is never reached."""
    tp = np.cumsum(is_tp_sorted)
    fp = np.cumsum(~np.asarray(is_tp_sorted))
    recall, precision = tp / n_gt, tp / (tp + fp)
    levels = np.linspace(0, 1, 101)
    vals = [max((p for rc, p in zip(recall, precision) if rc >= r), default=0.0) for r in levels]
    return 100 * float(np.mean(vals))


def test_track_iou_null_frames_and_zip():
    a, b = box(0, 0, 10, 10), box(50, 50, 5, 10)
    g = [ytvis.to_rle(uncompressed(m), H, W) if m is not None else None for m in (a, a, None)]
    d = [ytvis.to_rle(compressed(m), H, W) if m is not None else None for m in (a, None, b)]
    # frame 0: 100/100; frame 1: GT only (+100 union); frame 2: result only (+50 union)
    assert ytvis.track_iou(d, g) == pytest.approx(100 / 250)
    # the shorter list decides (zip): frame 2 never counts
    assert ytvis.track_iou(d[:2], g) == pytest.approx(100 / 200)


def test_partial_track_thresholds():
    a = box(0, 0, 10, 10)
    gt = gt_file([(1, 1, [a, a, a], 0)], 3)
    res = [result(1, 1, 0.9, [a, a, None])]  # IoU 200/300: matched at 0.50..0.65 (4 of 10 thresholds)
    out = ytvis.evaluate(gt, res)
    assert out["AP"] == pytest.approx(40.0)
    assert out["AP50"] == pytest.approx(100.0)
    assert out["AP75"] == pytest.approx(0.0)
    assert out["AR1"] == pytest.approx(40.0) and out["AR10"] == pytest.approx(40.0)


def test_duplicates_are_false_positives():
    a = box(0, 0, 20, 20)
    gt = gt_file([(1, 1, [a, a], 0), (2, 1, [a, a], 0)], 2)
    res = [result(1, 1, 0.9, [a, a]), result(1, 1, 0.8, [a, a]), result(2, 1, 0.7, [a, a])]
    out = ytvis.evaluate(gt, res)
    assert out["AP50"] == pytest.approx(interp_ap(np.array([True, False, True]), 2))
    assert out["AP"] == pytest.approx(out["AP50"])  # perfect masks: same at every threshold
    assert 83 < out["AP"] < 84  # (51 + 50 * 2/3) / 101


def test_wrong_class():
    a = box(10, 10, 30, 30)
    gt = gt_file([(1, 1, [a], 0), (2, 2, [a], 0)], 1)
    res = [result(1, 2, 0.9, [a]), result(2, 2, 0.5, [a])]
    out = ytvis.evaluate(gt, res)
    # class 1: its GT has no result -> 0; class 2: the wrong-class result in video 1 is a false positive
    # ranked first -> precision 0.5 at recall 1 -> 50.
    assert out["per_class"] == {"1": pytest.approx(0.0), "2": pytest.approx(interp_ap(np.array([False, True]), 1))}
    assert out["AP"] == pytest.approx(25.0)


def test_crowd_ignored():
    g1, crowd = box(0, 0, 20, 20), box(100, 100, 40, 40)
    res = [result(1, 1, 0.9, [crowd]), result(1, 1, 0.8, [crowd]), result(1, 1, 0.5, [g1])]
    out = ytvis.evaluate(gt_file([(1, 1, [g1], 0), (1, 1, [crowd], 1)], 1), res)
    assert out["AP"] == pytest.approx(100.0)  # both results on the crowd region are ignored, not FPs
    plain = ytvis.evaluate(gt_file([(1, 1, [g1], 0), (1, 1, [crowd], 0)], 1), res)
    assert plain["AP"] == pytest.approx(interp_ap(np.array([True, False, True]), 2))
    # a crowd GT is not a GT to find: nothing on g1 -> 0
    missed = ytvis.evaluate(gt_file([(1, 1, [g1], 0), (1, 1, [crowd], 1)], 1), res[:2])
    assert missed["AP"] == pytest.approx(0.0)


@pytest.mark.parametrize("with_areas", [True, False])
def test_area_ranges(with_areas):
    empty = np.zeros((H, W), dtype=bool)
    a = box(0, 0, 150, 150)    # frames [22500, empty, null] -> 22500 (medium); counting the empty frame would give small
    b = box(0, 0, 128, 128)    # 16384 = 128^2: small AND medium (closed ranges)
    c = box(0, 0, 260, 260)    # 67600: large
    d = box(0, 0, 50, 50)      # 2500: small
    gt = gt_file([(1, 1, [a, empty, None], 0), (2, 1, [b, b, b], 0), (3, 1, [c, None, None], 0),
                  (4, 1, [d, d, d], 0)], 3, with_areas=with_areas)
    res = [result(1, 1, 0.9, [a, empty, None]), result(3, 1, 0.8, [c, None, None]), result(4, 1, 0.7, [d, d, d])]
    out = ytvis.evaluate(gt, res)
    assert out["AP"] == pytest.approx(interp_ap(np.array([True, True, True]), 4))  # recall 3/4 at precision 1
    assert out["APs"] == pytest.approx(interp_ap(np.array([True]), 2))  # b and d count; a's and c's results ignored
    assert out["APm"] == pytest.approx(interp_ap(np.array([True]), 2))  # a and b count; d's result ignored
    assert out["APl"] == pytest.approx(100.0)
    assert ytvis.mean_area([22500, 0, None]) == 22500


def test_max_dets_per_video_and_category():
    g1, g2 = box(0, 0, 20, 20), box(100, 100, 20, 20)
    gt = gt_file([(1, 1, [g1], 0), (1, 1, [g2], 0)], 1)
    out = ytvis.evaluate(gt, [result(1, 1, 0.9, [g1]), result(1, 1, 0.8, [g2])])
    assert out["AR1"] == pytest.approx(50.0)
    assert out["AR10"] == pytest.approx(100.0)


def test_lvvis_base_novel_partition():
    a = box(0, 0, 30, 30)
    cats = [{"id": 1, "name": "cat", "partition": 0}, {"id": 2, "name": "dog", "partition": 1},
            {"id": 3, "name": "emu", "partition": 2}, {"id": 4, "name": "yak", "partition": 3}]
    gt = gt_file([(1, 1, [a], 0), (2, 2, [a], 0), (3, 3, [a], 0), (4, 4, [a], 0)], 1, categories=cats)
    # base: cat found, dog missed; novel: emu found, yak found
    res = [result(1, 1, 0.9, [a]), result(3, 3, 0.9, [a]), result(4, 4, 0.9, [a])]
    out = ytvis.evaluate(gt, res)
    assert out["AP_base"] == pytest.approx(50.0)
    assert out["AP_novel"] == pytest.approx(100.0)
    assert out["AP"] == pytest.approx(75.0)
    assert "AP_base" not in ytvis.evaluate(gt_file([(1, 1, [a], 0)], 1), res[:1])


def test_cli_scores_files(tmp_path, capsys):
    from declip.cli import main

    a = box(0, 0, 10, 10)
    (tmp_path / "gt.json").write_text(json.dumps(gt_file([(7, 1, [a, a], 0)], 2)))
    (tmp_path / "res.json").write_text(json.dumps([result(7, 1, 0.3, [a, a])]))
    assert main(["score", "ytvis", "--gt", str(tmp_path / "gt.json"), "--pred", str(tmp_path / "res.json")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["AP"] == pytest.approx(100.0)
    (tmp_path / "bad.json").write_text(json.dumps([result(8, 1, 0.3, [a])]))
    assert main(["score", "ytvis", "--gt", str(tmp_path / "gt.json"), "--pred", str(tmp_path / "bad.json")]) == 1
