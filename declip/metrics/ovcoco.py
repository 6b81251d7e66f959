"""OV-COCO box AP50 by category group (base / novel / all), with F-ViT's semantics (protocols.md section 3).

Reference: CLIPSelf F-ViT `datasets/coco_ov.py` (CocoDatasetOV.evaluate_det_segm, per-category block):
- pycocotools COCOeval, iouType bbox, over every category and image of the ground-truth file;
- per-category AP50 = mean of COCOeval's precision at IoU 0.5, area "all", the LAST maxDets, over the
  recall thresholds with a value (> -1); a category without non-crowd ground truth has no such value:
  NaN, left out of every group's mean (np.nanmean);
- F-ViT evaluates with maxDets (100, 300, 1000), so the last is 1000 (OV-DQUO uses 100: `--max-dets`);
  detections are not capped per image before COCOeval (COCOeval keeps the top maxDets by score);
- base / novel = F-ViT's `mscoco_seen_classes.json` (48) / `mscoco_unseen_classes.json` (17), matched by
  category name; "all" = every category of the ground truth.
Crowd regions are COCOeval's: a detection matched to one is ignored, never a false positive.
The matching itself is pycocotools', not re-implemented. Results are percentages.
An empty detection list is documented as AP50 0 for every category with ground truth (pycocotools
cannot load an empty list; no detection finds nothing).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

from declip.errors import UserFacingError

# F-ViT datasets/mscoco_seen_classes.json and mscoco_unseen_classes.json (the OV-COCO split of OVR-CNN).
OVCOCO_BASE = (
    "person", "bicycle", "car", "motorcycle", "train", "truck", "boat", "bench", "bird", "horse", "sheep",
    "bear", "zebra", "giraffe", "backpack", "handbag", "suitcase", "frisbee", "skis", "kite", "surfboard",
    "bottle", "fork", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "pizza",
    "donut", "chair", "bed", "toilet", "tv", "laptop", "mouse", "remote", "microwave", "oven", "toaster",
    "refrigerator", "book", "clock", "vase", "toothbrush",
)
OVCOCO_NOVEL = (
    "airplane", "bus", "cat", "dog", "cow", "elephant", "umbrella", "tie", "snowboard", "skateboard", "cup",
    "knife", "cake", "couch", "keyboard", "sink", "scissors",
)
DEFAULT_MAX_DETS = 1000  # F-ViT: maxDets (100, 300, 1000), the last one scores


def load_json(path, what: str):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserFacingError(f"{what} {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise UserFacingError(f"{what} {path} is not valid JSON ({e})") from None


def check_ground_truth(gt: dict, path) -> None:
    if not isinstance(gt, dict) or not all(k in gt for k in ("images", "annotations", "categories")):
        raise UserFacingError(f"ground truth {path} is not a COCO instances file (needs images, annotations, categories)")


def check_detections(dets, image_ids: set, category_ids: set, path) -> list[dict]:
    """The standard detection results list, validated against the ground truth's ids."""
    if isinstance(dets, dict) and "annotations" in dets:
        raise UserFacingError(f"{path} looks like a ground-truth file; predictions must be a JSON list of "
                              "{image_id, category_id, bbox: [x, y, w, h], score}")
    if not isinstance(dets, list):
        raise UserFacingError(f"{path}: predictions must be a JSON list of {{image_id, category_id, bbox, score}}")
    for i, d in enumerate(dets):
        if not isinstance(d, dict) or not all(k in d for k in ("image_id", "category_id", "bbox", "score")):
            raise UserFacingError(f"{path}: entry {i} lacks one of image_id, category_id, bbox, score: {d!r:.200}")
        box = d["bbox"]
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
            raise UserFacingError(f"{path}: entry {i} has bbox {box!r}; expected [x, y, width, height]")
        if d["image_id"] not in image_ids:
            raise UserFacingError(f"{path}: entry {i} has image_id {d['image_id']!r}, not in the ground truth")
        if d["category_id"] not in category_ids:
            raise UserFacingError(f"{path}: entry {i} has category_id {d['category_id']!r}, not in the ground truth")
    return dets


def per_category_ap50(gt: dict, dets: list[dict], max_dets: int = DEFAULT_MAX_DETS) -> dict[int, float]:
    """{category id: AP50 in [0, 1] or NaN} from pycocotools COCOeval (F-ViT coco_ov.py semantics)."""
    import numpy as np
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        cat_ids = sorted(coco_gt.getCatIds())
        if not dets:
            has_gt = {c for a in gt["annotations"] if not a.get("iscrowd", 0) for c in [a["category_id"]]}
            return {c: (0.0 if c in has_gt else math.nan) for c in cat_ids}
        coco_dt = coco_gt.loadRes([dict(d) for d in dets])  # loadRes adds keys in place: keep the caller's list
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.params.catIds = cat_ids
        ev.params.imgIds = sorted(coco_gt.getImgIds())
        # Only the last maxDets is read (precision[..., -1]); F-ViT's 100/300 entries change nothing there.
        ev.params.maxDets = [max_dets]
        ev.evaluate()
        ev.accumulate()
    precision = ev.eval["precision"]  # (iou, recall, category, area, maxDets)
    iou50 = int(np.argmin(np.abs(ev.params.iouThrs - 0.5)))
    out = {}
    for k, cat in enumerate(cat_ids):
        p = precision[iou50, :, k, 0, -1]
        p = p[p > -1]
        out[cat] = float(np.mean(p)) if p.size else math.nan
    return out


def group_means(ap: dict[int, float], names: dict[int, str], groups: dict[str, tuple[str, ...] | None]) -> dict:
    """{group: mean AP50 in percent over its categories with a value, or None}; a None name list = all."""
    out = {}
    for group, members in groups.items():
        vals = [v for c, v in ap.items() if (members is None or names[c] in members) and not math.isnan(v)]
        out[group] = 100.0 * sum(vals) / len(vals) if vals else None
    return out


def score(gt_path, pred_path, max_dets: int = DEFAULT_MAX_DETS, base=OVCOCO_BASE, novel=OVCOCO_NOVEL) -> dict:
    """AP50_novel / AP50_base / AP50_all (percent), per-category AP50 and the counts behind the means."""
    gt = load_json(gt_path, "ground truth")
    check_ground_truth(gt, gt_path)
    dets = load_json(pred_path, "predictions")
    return score_loaded(gt, check_detections(dets, {im["id"] for im in gt["images"]},
                                             {c["id"] for c in gt["categories"]}, pred_path),
                        max_dets, base, novel)


def score_loaded(gt: dict, dets: list[dict], max_dets: int = DEFAULT_MAX_DETS, base=OVCOCO_BASE,
                 novel=OVCOCO_NOVEL) -> dict:
    if max_dets < 1:
        raise UserFacingError(f"--max-dets must be at least 1, got {max_dets}")
    names = {c["id"]: c["name"] for c in gt["categories"]}
    unknown = (set(base) | set(novel)) - set(names.values())
    ap = per_category_ap50(gt, dets, max_dets)
    means = group_means(ap, names, {"novel": tuple(novel), "base": tuple(base), "all": None})
    counted = {g: sum(1 for c, v in ap.items() if not math.isnan(v) and (m is None or names[c] in m))
               for g, m in (("novel", tuple(novel)), ("base", tuple(base)), ("all", None))}
    return {
        "AP50_novel": means["novel"], "AP50_base": means["base"], "AP50_all": means["all"],
        "n_categories": counted, "max_dets": max_dets, "n_detections": len(dets),
        "per_category_AP50": {names[c]: (None if math.isnan(v) else 100.0 * v) for c, v in ap.items()},
        "split_names_not_in_gt": sorted(unknown),
    }


def main(args) -> dict:
    """`declip score ovcoco`: print the scores as JSON."""
    base, novel = OVCOCO_BASE, OVCOCO_NOVEL
    if args.split:
        split = load_json(args.split, "split file")
        if not isinstance(split, dict) or not {"base", "novel"} <= set(split):
            raise UserFacingError(f"split file {args.split} must be a JSON object with `base` and `novel` name lists")
        base, novel = tuple(split["base"]), tuple(split["novel"])
    out = score(args.gt, args.pred, args.max_dets or DEFAULT_MAX_DETS, base, novel)
    print(json.dumps(out, indent=1))
    return {k: v for k, v in out.items() if k.startswith("AP")}
