"""`declip score <family>`: score predictions given in a benchmark's official file formats.

Sub-verbs: `semseg` (index PNG folders, mmseg IoUMetric semantics), `scannet200` (ScanNet benchmark
instance AP) and `ytvis` (YouTube-VIS annotation and results JSON files, the official API's AP). All print
their scores as JSON on stdout.
"""

from __future__ import annotations

SUBVERBS = {
    "semseg": ("declip.metrics.semseg", "mIoU / aAcc / per-class IoU of index-PNG predictions (mmseg IoUMetric)."),
    "scannet200": ("declip.metrics.scannet200", "ScanNet200 instance AP (AP, AP50, AP25, head/common/tail)."),
    "ytvis": ("declip.metrics.ytvis", "YouTube-VIS / LV-VIS / OVIS video instance AP (AP, AP50, AP75, APs/m/l, AR1, AR10; "
                                      "LV-VIS base/novel)."),
}


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="family", required=True, metavar="FAMILY")
    for name, (_, help_text) in SUBVERBS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == "ytvis":
            p.add_argument("--gt", required=True, help="Ground-truth annotation JSON (videos, categories, annotations).")
            p.add_argument("--pred", required=True, help="Results JSON (video_id, category_id, score, segmentations).")
            continue
        p.add_argument("--gt", required=True, help="Ground-truth folder.")
        p.add_argument("--pred", required=True, help="Prediction folder (file names matching the ground truth).")
        if name == "semseg":
            p.add_argument("--num-classes", type=int, required=True, help="Number of classes K (labels 0..K-1).")
            p.add_argument("--ignore-index", type=int, default=255, help="Ground-truth label to ignore (default 255).")
            p.add_argument("--reduce-zero-label", action="store_true",
                           help="Ground truth 0 -> ignore, others minus 1 (ADE20K, as mmseg).")


def run(args, cfg) -> dict:
    import importlib

    out = importlib.import_module(SUBVERBS[args.family][0]).main(args)
    # NaN (v != v) is not a number a tracker can record.
    metrics = {k: v for k, v in (out or {}).items() if isinstance(v, (int, float)) and v == v}
    return {"metrics": metrics}
