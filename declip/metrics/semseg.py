"""Semantic-segmentation mIoU with mmsegmentation `IoUMetric` semantics (protocols.md section 2).

One confusion matrix accumulated over the whole dataset (not a mean of per-image IoUs); pixels whose
ground truth is `ignore_index` are dropped from both sides; with `reduce_zero_label` the ground truth's
0 becomes ignore and every other label shifts down by one (ADE20K, mmseg `LoadAnnotations`); a class
with neither ground truth nor prediction has IoU NaN and is left out of the mean (`np.nanmean`).
Everything returned is in percent.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from declip.data.semseg import read_index_png
from declip.errors import UserFacingError


def reduce_zero_label(gt: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """mmseg's reduce_zero_label: 0 -> ignore, k -> k-1 (ignore stays ignore)."""
    out = gt.astype(np.int64) - 1
    out[gt == 0] = ignore_index
    out[gt == ignore_index] = ignore_index
    return out


class ConfusionMatrix:
    """Dataset-level confusion counts: rows = ground truth, columns = prediction."""

    def __init__(self, num_classes: int, ignore_index: int = 255, reduce_zero_label: bool = False):
        if num_classes < 1:
            raise UserFacingError(f"--num-classes must be at least 1 (got {num_classes})")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.reduce_zero_label = reduce_zero_label
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
        # GT pixels predicted as a label outside 0..K-1: part of the GT area, of no prediction area (histc).
        self.gt_unmatched = np.zeros(num_classes, dtype=np.int64)

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        pred = np.asarray(pred)
        gt = np.asarray(gt)
        if pred.shape != gt.shape:
            raise UserFacingError(f"prediction shape {pred.shape} differs from ground truth {gt.shape}")
        if self.reduce_zero_label:
            gt = reduce_zero_label(gt, self.ignore_index)
        gt = gt.astype(np.int64).ravel()
        pred = pred.astype(np.int64).ravel()
        keep = gt != self.ignore_index
        gt, pred = gt[keep], pred[keep]
        bad = (gt < 0) | (gt >= self.num_classes)
        if bad.any():
            raise UserFacingError(
                f"ground truth has labels {sorted(set(gt[bad].tolist()))[:5]} outside 0..{self.num_classes - 1} "
                "that are not the ignore index: check --num-classes, --ignore-index and --reduce-zero-label"
            )
        # mmseg counts predictions outside the class range as wrong for the GT class only (no column).
        valid = (pred >= 0) & (pred < self.num_classes)
        self.matrix += np.bincount(
            gt[valid] * self.num_classes + pred[valid], minlength=self.num_classes**2
        ).reshape(self.num_classes, self.num_classes)
        self.gt_unmatched += np.bincount(gt[~valid], minlength=self.num_classes)

    def scores(self) -> dict:
        """{"mIoU", "aAcc", "IoU": [per class, NaN where no GT and no prediction]} in percent."""
        intersect = np.diag(self.matrix).astype(np.float64)
        area_gt = self.matrix.sum(1) + self.gt_unmatched
        area_pred = self.matrix.sum(0)
        union = area_gt + area_pred - intersect
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = intersect / union  # 0/0 -> NaN: excluded from the mean like mmseg
        total = area_gt.sum()
        miou = float(np.nanmean(iou)) * 100 if np.isfinite(iou).any() else math.nan
        return {
            "mIoU": miou,
            "aAcc": float(intersect.sum() / total) * 100 if total else math.nan,
            "IoU": [float(v) * 100 for v in iou],
        }


def score_folders(gt_dir: str | Path, pred_dir: str | Path, num_classes: int, ignore_index: int = 255,
                  reduce_zero: bool = False, class_names: list[str] | None = None) -> dict:
    """Score every GT PNG of gt_dir against the PNG of the same name in pred_dir."""
    gt_dir, pred_dir = Path(gt_dir), Path(pred_dir)
    for d, flag in ((gt_dir, "--gt"), (pred_dir, "--pred")):
        if not d.is_dir():
            raise UserFacingError(f"{flag} folder {d} does not exist")
    gts = sorted(gt_dir.glob("*.png"))
    if not gts:
        raise UserFacingError(f"no ground-truth PNGs in {gt_dir}")
    missing = [p.name for p in gts if not (pred_dir / p.name).exists()]
    if missing:
        raise UserFacingError(
            f"{len(missing)} of {len(gts)} predictions missing in {pred_dir} (e.g. {', '.join(missing[:5])}): "
            "write one index PNG per ground-truth file, with the same name"
        )
    cm = ConfusionMatrix(num_classes, ignore_index, reduce_zero)
    for p in gts:
        cm.update(read_index_png(pred_dir / p.name), read_index_png(p))
    return report(cm, class_names)


def report(cm: ConfusionMatrix, class_names: list[str] | None = None) -> dict:
    """The metrics.json payload: mIoU, aAcc and per-class IoU keyed by name (null where undefined)."""
    s = cm.scores()
    names = class_names or [str(i) for i in range(cm.num_classes)]
    return {
        "mIoU": s["mIoU"],
        "aAcc": s["aAcc"],
        "per_class": {n: (None if math.isnan(v) else v) for n, v in zip(names, s["IoU"])},
    }


def main(args) -> dict:
    """`declip score semseg`: print the scores as JSON."""
    out = score_folders(args.gt, args.pred, args.num_classes, args.ignore_index, args.reduce_zero_label)
    print(json.dumps(out, indent=1))
    return out
