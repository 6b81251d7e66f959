"""YouTube-VIS video instance segmentation AP, with the official API's semantics, on pycocotools' COCOeval.

Reference: youtubevos/cocoapi PythonAPI/pycocotools/ytvoseval.py (YTVOSeval) and ytvos.py (YTVOS.loadRes),
and LV-VIS's copy (haochenheheda/LVVIS evaluate/lvviseval.py) for base/novel. YTVOSeval is COCOeval with
videos in place of images; everything below that differs from COCOeval is done here, the per-video
matching (`evaluateImg`) and the accumulation are COCOeval's own:
- a track is a list of per-frame segmentations (RLE, uncompressed RLE or polygons; null = absent);
- IoU(d, g) = sum_t |d_t & g_t| / sum_t |d_t | g_t| over zip(d, g) (the shorter list decides), a frame
  where only one side has a mask adds its area to the union only (ytvoseval.py computeIoU/iou_seq);
  no crowd-specific IoU (the crowd flag reaches the matching only);
- a track's area = mean of its non-null, non-zero per-frame areas (0 when none): the GT file's `areas`
  field (as ytvoseval reads it; computed from the masks when a file lacks it), the results' areas from
  their masks (ytvos.py loadRes);
- area ranges all [0, 1e5^2], small [0, 128^2], medium [128^2, 256^2], large [256^2, 1e5^2], closed at
  both ends (COCOeval's `<`/`>` tests); maxDets 1/10/100 per (video, category); GT `iscrowd` = ignore;
- AP, AP50, AP75, APs, APm, APl at maxDets 100, AR1, AR10 (ytvoseval.py summarize, stats 0-7), percent;
- LV-VIS: categories with `partition` 0/1 are base, 2/3 novel (protocols.md section 6); AP_base/AP_novel
  average the AP precision entries (> -1) over those categories (lvviseval.py summarize). LVVISeval's
  evaluateVid ignores the crowd flag (LV-VIS has no crowd annotations, so both agree there).
A value the API reports as -1 (no GT in that setting) is None here.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np

from declip.data.ytvis import to_rle
from declip.errors import UserFacingError

AREA_RANGES = [[0 ** 2, 1e5 ** 2], [0 ** 2, 128 ** 2], [128 ** 2, 256 ** 2], [256 ** 2, 1e5 ** 2]]
AREA_LABELS = ["all", "small", "medium", "large"]
BASE_PARTITIONS, NOVEL_PARTITIONS = (0, 1), (2, 3)
HEADLINE = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10")


def load_json(path, what: str):
    p = Path(path)
    if not p.is_file():
        raise UserFacingError(f"{what} file {p} does not exist")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise UserFacingError(f"{what} file {p} is not valid JSON ({e})") from e


def mean_area(areas) -> float:
    """ytvoseval.py `avg_area`: mean of the non-null, non-zero per-frame areas; 0 when there are none."""
    vals = [a for a in areas if a]
    return float(np.mean(vals)) if vals else 0.0


def track_iou(d_seq, g_seq) -> float:
    """Spatio-temporal IoU of two lists of compressed RLEs (None = no mask in that frame)."""
    from pycocotools import mask as mask_utils

    inter = union = 0.0
    for d, g in zip(d_seq, g_seq):
        if d and g:
            inter += float(mask_utils.area(mask_utils.merge([d, g], True)))
            union += float(mask_utils.area(mask_utils.merge([d, g], False)))
        elif g:
            union += float(mask_utils.area(g))
        elif d:
            union += float(mask_utils.area(d))
    return inter / union if union > 0 else 0.0


def _prepare_tracks(anns: list[dict], videos: dict, gt: bool) -> list[dict]:
    from pycocotools import mask as mask_utils

    out = []
    for k, ann in enumerate(anns):
        vid = ann.get("video_id")
        if vid not in videos:
            raise UserFacingError(f"{'annotation' if gt else 'result'} {k} has video_id {vid!r}, which is not a video "
                                  "of the ground truth (results must use the GT file's video ids)")
        v = videos[vid]
        segs = [to_rle(s, v["height"], v["width"]) for s in ann.get("segmentations") or []]
        if gt and ann.get("areas") is not None:
            areas = ann["areas"]
        else:
            areas = [float(mask_utils.area(s)) if s else None for s in segs]
        out.append({
            "id": int(ann["id"]) if gt else k + 1,  # loadRes numbers results 1..N
            "video_id": vid, "image_id": vid, "category_id": ann["category_id"],
            "segmentations": segs, "area": mean_area(areas),
            "iscrowd": int(ann.get("iscrowd", 0)) if gt else 0,
            "score": float(ann["score"]) if not gt else 1.0,
        })
    return out


def _evaluator_class():
    from pycocotools.cocoeval import COCOeval

    class YTVISeval(COCOeval):
        """COCOeval over videos: `_prepare` groups tracks by (video, category), `computeIoU` is spatio-temporal."""

        def __init__(self, gt_tracks, dt_tracks, video_ids, cat_ids):
            super().__init__(None, None, "segm")
            self.params.imgIds = sorted(video_ids)
            self.params.catIds = sorted(cat_ids)
            self.params.areaRng = [list(r) for r in AREA_RANGES]
            self.params.areaRngLbl = list(AREA_LABELS)
            self._gt_tracks, self._dt_tracks = gt_tracks, dt_tracks

        def _prepare(self):
            from collections import defaultdict

            self._gts, self._dts = defaultdict(list), defaultdict(list)
            cats = set(self.params.catIds)
            for g in self._gt_tracks:
                if g["category_id"] in cats:
                    g["ignore"] = bool(g["iscrowd"])  # ytvoseval.py: ignore = iscrowd
                    self._gts[g["video_id"], g["category_id"]].append(g)
            for d in self._dt_tracks:
                if d["category_id"] in cats:
                    self._dts[d["video_id"], d["category_id"]].append(d)
            self.evalImgs = defaultdict(list)
            self.eval = {}

        def computeIoU(self, vid, cat):
            gt, dt = self._gts[vid, cat], self._dts[vid, cat]
            if not gt and not dt:
                return []
            order = np.argsort([-d["score"] for d in dt], kind="mergesort")
            dt = [dt[i] for i in order][:self.params.maxDets[-1]]
            ious = np.zeros((len(dt), len(gt)))
            for i, j in np.ndindex(ious.shape):
                ious[i, j] = track_iou(dt[i]["segmentations"], gt[j]["segmentations"])
            return ious

    return YTVISeval


def _mean_valid(s) -> float | None:
    s = np.asarray(s)
    valid = s[s > -1]
    return float(valid.mean()) if valid.size else None


def _pct(v):
    return None if v is None else round(100.0 * v, 4)


def evaluate(gt: dict, results: list[dict]) -> dict:
    """Scores (percent) of YouTube-VIS results against a YouTube-VIS GT dict; see the module docstring."""
    for key in ("videos", "categories", "annotations"):
        if key not in gt:
            raise UserFacingError(f"ground truth has no `{key}`: expected the YouTube-VIS format "
                                  "(videos, categories, annotations with per-frame segmentations)")
    if not isinstance(results, list):
        raise UserFacingError("results must be a JSON list of {video_id, category_id, score, segmentations}")
    videos = {v["id"]: v for v in gt["videos"]}
    cats = [c["id"] for c in gt["categories"]]
    gt_tracks = _prepare_tracks(gt["annotations"], videos, gt=True)
    dt_tracks = _prepare_tracks(results, videos, gt=False)
    E = _evaluator_class()(gt_tracks, dt_tracks, list(videos), cats)
    with contextlib.redirect_stdout(io.StringIO()):  # COCOeval prints progress lines
        E.evaluate()
        E.accumulate()
    p = E.params
    prec, rec = E.eval["precision"], E.eval["recall"]  # [T,R,K,A,M], [T,K,A,M]
    t50, t75 = int(np.argmin(np.abs(p.iouThrs - 0.5))), int(np.argmin(np.abs(p.iouThrs - 0.75)))
    m100 = p.maxDets.index(100)
    out = {
        "AP": _pct(_mean_valid(prec[:, :, :, 0, m100])),
        "AP50": _pct(_mean_valid(prec[t50, :, :, 0, m100])),
        "AP75": _pct(_mean_valid(prec[t75, :, :, 0, m100])),
        "APs": _pct(_mean_valid(prec[:, :, :, 1, m100])),
        "APm": _pct(_mean_valid(prec[:, :, :, 2, m100])),
        "APl": _pct(_mean_valid(prec[:, :, :, 3, m100])),
        "AR1": _pct(_mean_valid(rec[:, :, 0, p.maxDets.index(1)])),
        "AR10": _pct(_mean_valid(rec[:, :, 0, p.maxDets.index(10)])),
    }
    partition = {c["id"]: c.get("partition") for c in gt["categories"]}
    if any(v is not None for v in partition.values()):
        for name, parts in (("base", BASE_PARTITIONS), ("novel", NOVEL_PARTITIONS)):
            idx = [k for k, c in enumerate(p.catIds) if partition.get(c) in parts]
            out[f"AP_{name}"] = _pct(_mean_valid(prec[:, :, idx, 0, m100])) if idx else None
    per_class = {}
    for k, c in enumerate(p.catIds):
        per_class[str(c)] = _pct(_mean_valid(prec[:, :, k, 0, m100]))
    out["per_class"] = per_class
    out["n_videos"], out["n_gt_tracks"], out["n_results"] = len(videos), len(gt_tracks), len(dt_tracks)
    return out


def score_files(gt_path, pred_path) -> dict:
    return evaluate(load_json(gt_path, "ground-truth"), load_json(pred_path, "results"))


def main(args) -> dict:
    """`declip score ytvis --gt ANNOTATIONS.json --pred RESULTS.json`: print the scores (percent) as JSON."""
    out = score_files(args.gt, args.pred)
    print(json.dumps(out, indent=1))
    return out
