"""ScanNet200 3D instance segmentation AP, with the ScanNet benchmark's semantics (clean-room).

Reference: ScanNet BenchmarkScripts/3d_evaluation/evaluate_semantic_instance.py and its ScanNet200
variant in OpenMask3D (openmask3d/evaluation/eval_semantic_instance.py). Semantics reproduced here:
- GT: one int per vertex, label_id*1000 + instance_id; ids with a label outside the 198 scored classes
  (wall, floor, unannotated 0, anything else) are void. GT instances below 100 vertices are not counted.
- Predictions: a mask (nonzero = in), a label id and a confidence; masks below 100 vertices and labels
  outside the scored classes are dropped.
- Overlap thresholds np.append(np.arange(0.5, 0.95, 0.05), 0.25) (0.50..0.90 and 0.25); a match needs
  IoU strictly above the threshold. Per class and threshold, GT instances (in file order) greedily take
  the not-yet-used predictions (in file order) above the threshold; a second match of the same GT is a
  false positive carrying the lower confidence. Unmatched predictions are false positives unless more
  than `threshold` of their vertices fall on void, on GT ids < 1000 or on too-small GT of their class.
- AP per class: precision/recall at each unique confidence, an artificial (recall 0, precision 1) end
  point, area by the benchmark's central-difference step widths. Class with GT but no prediction: 0;
  class without GT: NaN (left out of the means).
- AP = mean over classes and over the 0.50..0.90 thresholds; AP50, AP25 = the 0.5 and 0.25 columns;
  head/common/tail = mean over the classes of the split (percent here).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from declip.data.scannet200 import INSTANCE_CLASS_IDS, NAME_OF, NON_INSTANCE_IDS, SPLIT_OF, SPLITS
from declip.errors import UserFacingError

log = logging.getLogger(__name__)
OVERLAPS = np.append(np.arange(0.5, 0.95, 0.05), 0.25)  # ScanNet benchmark opt.overlaps
MIN_REGION_SIZE = 100  # vertices, ScanNet benchmark opt.min_region_sizes


@dataclass
class Prediction:
    mask: np.ndarray  # (N,) bool over the scene's vertices
    label_id: int
    confidence: float


@dataclass
class _GT:
    gt_id: int
    vert_count: int
    matched: list = field(default_factory=list)  # (pred key, intersection, _Pred) in prediction order


@dataclass
class _Pred:
    key: tuple[str, int]
    confidence: float
    vert_count: int
    void_intersection: int
    matched: list = field(default_factory=list)  # (_GT, intersection)


def _assign_scene(scene: str, gt_ids: np.ndarray, preds: list[Prediction], valid: np.ndarray, min_size: int):
    """Per class: the scene's GT instances and predictions with their pairwise intersections."""
    gts: dict[int, list[_GT]] = {}
    uniq, inverse, counts = np.unique(gt_ids, return_inverse=True, return_counts=True)
    for u, c in zip(uniq, counts):
        if u != 0 and np.isin(u // 1000, valid):
            gts.setdefault(int(u // 1000), []).append(_GT(int(u), int(c)))
    void = ~np.isin(gt_ids // 1000, valid)
    out: dict[int, list[_Pred]] = {}
    for k, p in enumerate(preds):
        mask = np.asarray(p.mask) != 0
        if mask.shape != gt_ids.shape:
            raise UserFacingError(f"{scene}: prediction {k} has {mask.size} values, the GT has {gt_ids.size} vertices")
        label = int(p.label_id)
        n = int(mask.sum())
        if label not in valid or n < min_size:
            continue
        pred = _Pred((scene, k), float(p.confidence), n, int(np.count_nonzero(void & mask)))
        inter = np.bincount(inverse[mask], minlength=len(uniq))
        for gt in gts.get(label, []):
            i = int(inter[np.searchsorted(uniq, gt.gt_id)])
            if i > 0:
                gt.matched.append((pred.key, i, pred))
                pred.matched.append((gt, i))
        out.setdefault(label, []).append(pred)
    return gts, out


def _average_precision(y_true: np.ndarray, y_score: np.ndarray, hard_false_negatives: int) -> float:
    """Area under the benchmark's precision-recall curve (unique confidences as thresholds)."""
    order = np.argsort(y_score, kind="stable")
    y_score, y_true = y_score[order], y_true[order]
    cumsum = np.cumsum(y_true)
    _, unique_idx = np.unique(y_score, return_index=True)
    n_examples = len(y_score)
    n_true = cumsum[-1] if len(cumsum) else 0
    precision = np.zeros(len(unique_idx) + 1)
    recall = np.zeros(len(unique_idx) + 1)
    cumsum = np.append(cumsum, 0)  # index -1 reads 0 for the first threshold
    for r, idx in enumerate(unique_idx):
        below = cumsum[idx - 1]  # true examples scored below this threshold
        tp = n_true - below
        fp = n_examples - idx - tp
        fn = below + hard_false_negatives
        precision[r] = tp / (tp + fp)
        recall[r] = tp / (tp + fn)
    precision[-1], recall[-1] = 1.0, 0.0
    # central-difference step widths of the recall curve, padded at both ends (benchmark's np.convolve)
    padded = np.concatenate([[recall[0]], recall, [0.0]])
    steps = (padded[:-2] - padded[2:]) / 2
    return float(np.dot(precision, steps))


def evaluate(gt: dict[str, np.ndarray], preds: dict[str, list[Prediction]], min_region_size: int = MIN_REGION_SIZE,
             class_ids=INSTANCE_CLASS_IDS) -> dict:
    """Benchmark AP over scenes. gt: scene -> (N,) ids; preds: scene -> predictions (a scene may be absent).
    Returns fractions (0-1): {"AP", "AP50", "AP25", "AP_head", "AP_common", "AP_tail", "per_class"}."""
    valid = np.asarray(class_ids)
    scenes = sorted(gt)
    assigned = {s: _assign_scene(s, np.asarray(gt[s], dtype=np.int64), preds.get(s, []), valid, min_region_size)
                for s in scenes}
    ap = np.zeros((len(valid), len(OVERLAPS)))
    for oi, th in enumerate(OVERLAPS):
        for li, label in enumerate(valid):
            label = int(label)
            y_true, y_score, hard_fn = [], [], 0
            has_gt = has_pred = False
            for s in scenes:
                gts_all, preds_by = assigned[s]
                class_preds = preds_by.get(label, [])
                gts = [g for g in gts_all.get(label, []) if g.gt_id >= 1000 and g.vert_count >= min_region_size]
                has_gt |= bool(gts)
                has_pred |= bool(class_preds)
                visited: set = set()
                for g in gts:
                    matched_score = None
                    for key, inter, p in g.matched:
                        if key in visited:
                            continue
                        if inter / (g.vert_count + p.vert_count - inter) > th:
                            if matched_score is None:
                                matched_score = p.confidence
                                visited.add(key)
                            else:  # the weaker of two matches of one GT counts as a false positive
                                y_true.append(0)
                                y_score.append(min(matched_score, p.confidence))
                                matched_score = max(matched_score, p.confidence)
                    if matched_score is None:
                        hard_fn += 1
                    else:
                        y_true.append(1)
                        y_score.append(matched_score)
                for p in class_preds:
                    if any(i / (g.vert_count + p.vert_count - i) > th for g, i in p.matched):
                        continue
                    ignored = p.void_intersection + sum(i for g, i in p.matched if g.gt_id < 1000)
                    ignored += sum(i for g, i in p.matched if g.vert_count < min_region_size)
                    if ignored / p.vert_count <= th:
                        y_true.append(0)
                        y_score.append(p.confidence)
            if has_gt and has_pred:
                ap[li, oi] = _average_precision(np.asarray(y_true, float), np.asarray(y_score, float), hard_fn)
            elif has_gt:
                ap[li, oi] = 0.0
            else:
                ap[li, oi] = np.nan
    return _averages(ap, valid)


def _nanmean(x) -> float:
    x = np.asarray(x, dtype=float)
    return float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")


def _averages(ap: np.ndarray, valid: np.ndarray) -> dict:
    o50 = np.isclose(OVERLAPS, 0.5)
    o25 = np.isclose(OVERLAPS, 0.25)
    main = ~o25
    per_class = {}
    for li, label in enumerate(valid):
        row = ap[li]
        per_class[NAME_OF[int(label)]] = {"AP": _nanmean(row[main]) if np.isfinite(row).all() else float("nan"),
                                          "AP50": float(row[o50][0]), "AP25": float(row[o25][0])}
    out = {"AP": _nanmean(ap[:, main]), "AP50": _nanmean(ap[:, o50]), "AP25": _nanmean(ap[:, o25])}
    for split in SPLITS:
        out[f"AP_{split}"] = _nanmean([v["AP"] for n, v in per_class.items() if SPLIT_OF[n] == split])
    out["per_class"] = per_class
    return out


def to_percent(result: dict) -> dict:
    """The same dict with every score x100 (metrics.json convention); NaN becomes None (JSON null)."""
    def pct(v):
        return None if v is None or not np.isfinite(v) else round(100.0 * float(v), 4)

    out = {k: pct(v) for k, v in result.items() if k != "per_class"}
    if "per_class" in result:
        out["per_class"] = {n: {k: pct(v) for k, v in d.items()} for n, d in result["per_class"].items()}
    return out


# --- official file formats -----------------------------------------------------------------------


def read_gt(path: str | Path) -> np.ndarray:
    return np.loadtxt(path, dtype=np.int64).reshape(-1)


def read_predictions(pred_file: str | Path, pred_dir: str | Path | None = None) -> list[Prediction]:
    """A ScanNet benchmark prediction file: lines `<mask path relative to pred_dir> <label id> <confidence>`,
    each mask file one integer per vertex."""
    pred_file = Path(pred_file)
    base = Path(pred_dir) if pred_dir is not None else pred_file.parent
    out = []
    for n, line in enumerate(pred_file.read_text().splitlines()):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3:
            raise UserFacingError(f"{pred_file}:{n + 1}: expected `<mask file> <label id> <confidence>`, got {line!r}")
        label, confidence = _label_and_confidence(pred_file, n + 1, parts[1], parts[2])
        mask = np.loadtxt(base / parts[0], dtype=np.int64).reshape(-1) != 0
        out.append(Prediction(mask, label, confidence))
    return out


def _label_and_confidence(pred_file: Path, line_no: int, label: str, confidence: str) -> tuple[int, float]:
    """Validated fields of one prediction line. The official script silently skips label ids outside its
    class list and sorts NaN confidences arbitrarily; here both stop with the file and line instead
    (a wrong vocabulary or a broken export must not look like a low score)."""
    where = f"{pred_file}:{line_no}"
    try:
        label_id, conf = int(label), float(confidence)
    except ValueError:
        raise UserFacingError(f"{where}: the label id must be an integer and the confidence a number, "
                              f"got {label!r} and {confidence!r}") from None
    if label_id not in _VALID_IDS:
        raise UserFacingError(f"{where}: label id {label_id} is not a ScanNet200 instance class id "
                              f"({len(_VALID_IDS)} ids, {min(_VALID_IDS)}..{max(_VALID_IDS)}; wall and floor excluded)")
    if not math.isfinite(conf):
        raise UserFacingError(f"{where}: confidence {confidence!r} is not a finite number")
    return label_id, conf


_VALID_IDS = frozenset(int(i) for i in INSTANCE_CLASS_IDS)


def write_predictions(pred_dir: str | Path, scene: str, preds: list[Prediction]) -> Path:
    """Write `<pred_dir>/<scene>.txt` and `<pred_dir>/pred_mask/<scene>_<k>.txt` (benchmark format).

    Masks labelled wall or floor (a 200-class vocabulary has them; OpenMask3D classifies over all 200) are
    not written: the official script skips every prediction whose label is not an instance class, so the
    scores are unchanged, and the files stay within what `read_predictions` accepts."""
    pred_dir = Path(pred_dir)
    (pred_dir / "pred_mask").mkdir(parents=True, exist_ok=True)
    lines = []
    for k, p in enumerate(q for q in preds if int(q.label_id) not in NON_INSTANCE_IDS):
        rel = f"pred_mask/{scene}_{k}.txt"
        (pred_dir / rel).write_text("\n".join("1" if m else "0" for m in np.asarray(p.mask, bool)) + "\n")
        lines.append(f"{rel} {int(p.label_id)} {float(p.confidence):.6f}")
    path = pred_dir / f"{scene}.txt"
    path.write_text("".join(line + "\n" for line in lines))
    return path


def score_folders(gt_dir: str | Path, pred_dir: str | Path) -> dict:
    """Score every GT scene `<gt_dir>/<scene>.txt` against `<pred_dir>/<scene>.txt` (missing = no predictions)."""
    gt_dir, pred_dir = Path(gt_dir), Path(pred_dir)
    gt_files = sorted(gt_dir.glob("*.txt"))
    if not gt_files:
        raise UserFacingError(f"no GT files <scene>.txt in {gt_dir}: give the folder of per-vertex instance GT")
    if not pred_dir.is_dir():
        raise UserFacingError(f"prediction folder {pred_dir} does not exist")
    gt = {f.stem: read_gt(f) for f in gt_files}
    preds = {s: read_predictions(pred_dir / f"{s}.txt", pred_dir) for s in gt if (pred_dir / f"{s}.txt").exists()}
    if not preds:
        raise UserFacingError(f"no prediction file in {pred_dir} matches a GT scene (expected e.g. {gt_files[0].name})")
    missing = sorted(set(gt) - set(preds))
    if missing:
        log.warning("%d of %d GT scenes have no prediction file in %s and are scored as predicting nothing "
                    "(e.g. %s)", len(missing), len(gt), pred_dir, ", ".join(missing[:3]))
    out = to_percent(evaluate(gt, preds))
    out.update(scenes=len(gt), scenes_missing=len(missing))
    return out


def main(args) -> dict:
    """`declip score scannet200 --gt DIR --pred DIR`: print the scores (percent) as JSON."""
    out = score_folders(args.gt, args.pred)
    print(json.dumps(out, indent=1))
    return out
