"""OV-LVIS box AP (AP, APr, APc, APf) with the official `lvis` package (protocols.md section 3).

LVISEval does the matching and the frequency groups (r = rare = the novel classes of OV-LVIS); we only
load the files, check them, and report percentages. `lvis` 0.5.3 is the last release and predates
numpy 1.24: `import_lvis` is the one place that makes it importable today (see its docstring).
"""

from __future__ import annotations

import contextlib
import io
import json
import math

from declip.errors import UserFacingError
from declip.metrics.ovcoco import check_detections, load_json

FIELDS = ("AP", "AP50", "AP75", "APr", "APc", "APf")
DEFAULT_MAX_DETS = 300  # LVISEval's default (and F-ViT's OV-LVIS test max_per_img)


def import_lvis():
    """The `lvis` module, made importable with current numpy.

    lvis 0.5.3 `eval.py` casts with `np.float` (removed in numpy 1.24): alias it to the builtin float, which
    is what `np.float` always was. Its package `__init__` also imports the visualiser, which needs OpenCV;
    scoring never draws, so when cv2 cannot be imported a placeholder module stands in for it (using it
    raises an error that names the fix)."""
    import sys
    import types

    import numpy as np

    if "float" not in np.__dict__:  # the only removed alias lvis uses (eval.py accumulate)
        np.float = float
    try:
        import cv2  # noqa: F401
    except ImportError:
        stub = types.ModuleType("cv2")

        def _missing(name):
            raise UserFacingError(f"cv2.{name}: OpenCV is not installed; `pip install opencv-python-headless` "
                                  "to use lvis' visualiser (scoring does not need it)")

        stub.__getattr__ = _missing
        sys.modules["cv2"] = stub
    try:
        import lvis
    except ImportError as e:
        raise UserFacingError(f"the `lvis` package is missing ({e}); `pip install lvis` (listed in pyproject.toml)") from None
    return lvis


def check_lvis_ground_truth(gt: dict, path) -> None:
    if not isinstance(gt, dict) or not all(k in gt for k in ("images", "annotations", "categories")):
        raise UserFacingError(f"ground truth {path} is not an LVIS file (needs images, annotations, categories)")
    if any("frequency" not in c for c in gt["categories"]):
        raise UserFacingError(f"ground truth {path}: LVIS categories need a `frequency` (r, c or f)")
    if any("neg_category_ids" not in im or "not_exhaustive_category_ids" not in im for im in gt["images"]):
        raise UserFacingError(f"ground truth {path}: LVIS images need `neg_category_ids` and `not_exhaustive_category_ids`")


def score_loaded(gt: dict, dets: list[dict], max_dets: int = DEFAULT_MAX_DETS) -> dict:
    """{AP, AP50, AP75, APr, APc, APf} in percent (None where LVISEval gives -1: no category of the group)."""
    if not dets:  # LVISResults cannot load an empty list; no detection finds nothing
        return {k: 0.0 for k in FIELDS} | {"n_detections": 0, "max_dets": max_dets}
    lvis = import_lvis()
    with contextlib.redirect_stdout(io.StringIO()):
        gt_api = _loaded_lvis(lvis, gt)
        res = lvis.LVISResults(gt_api, [dict(d) for d in dets], max_dets=max_dets)
        ev = lvis.LVISEval(gt_api, res, iou_type="bbox")
        ev.params.max_dets = max_dets
        ev.run()
    out = {}
    for k in FIELDS:
        v = float(ev.results[k])
        out[k] = None if v < 0 or math.isnan(v) else 100.0 * v
    return out | {"n_detections": len(dets), "max_dets": max_dets}


def _loaded_lvis(lvis, gt: dict):
    """An LVIS index of an already loaded dict (LVIS() itself only takes a path)."""
    import logging

    class _Loaded(lvis.LVIS):
        def __init__(self, dataset):
            self.logger = logging.getLogger("lvis")
            self.dataset = dataset
            self._create_index()

    return _Loaded(gt)


def score(gt_path, pred_path, max_dets: int = DEFAULT_MAX_DETS) -> dict:
    gt = load_json(gt_path, "ground truth")
    check_lvis_ground_truth(gt, gt_path)
    dets = check_detections(load_json(pred_path, "predictions"), {im["id"] for im in gt["images"]},
                            {c["id"] for c in gt["categories"]}, pred_path)
    return score_loaded(gt, dets, max_dets)


def main(args) -> dict:
    """`declip score lvis`: print the scores as JSON."""
    out = score(args.gt, args.pred, args.max_dets or DEFAULT_MAX_DETS)
    print(json.dumps(out, indent=1))
    return out
