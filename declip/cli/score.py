"""`declip score <family>`: score predictions given in a benchmark's official file formats.

Sub-verbs: one per benchmark format (`SUBVERBS` below). Each prints its scores as JSON on stdout.
"""

from __future__ import annotations

SUBVERBS = {
    "semseg": ("declip.metrics.semseg", "mIoU / aAcc / per-class IoU of index-PNG predictions (mmseg IoUMetric)."),
    "scannet200": ("declip.metrics.scannet200", "ScanNet200 instance AP (AP, AP50, AP25, head/common/tail)."),
    "bop": ("declip.metrics.bop", "BOP19 6D pose AR (VSD, MSSD, MSPD) and ADD(S)-0.1d of a BOP19 results CSV."),
    "ytvis": ("declip.metrics.ytvis", "YouTube-VIS / LV-VIS / OVIS video instance AP (AP, AP50, AP75, APs/m/l, AR1, AR10; "
                                      "LV-VIS base/novel)."),
    "ovcoco": ("declip.metrics.ovcoco", "OV-COCO box AP50 of novel / base / all categories (F-ViT coco_ov.py)."),
    "lvis": ("declip.metrics.lvis_ap", "LVIS v1 box AP, APr, APc, APf (official lvis LVISEval)."),
}
DETECTION = ("ovcoco", "lvis")


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="family", required=True, metavar="FAMILY")
    for name, (_, help_text) in SUBVERBS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == "bop":
            p.add_argument("--dataset", required=True, help="BOP-format dataset root (models, split, targets file).")
            p.add_argument("--pred", required=True, help="Results CSV in the BOP19 format.")
            p.add_argument("--split", default="test", help="Split folder under the root (default test).")
            p.add_argument("--targets", default="test_targets_bop19.json", help="Targets file at the root.")
            p.add_argument("--vsd-delta", type=float, default=15.0, help="VSD delta in mm (BOP19: 15).")
            continue
        if name == "ytvis":
            p.add_argument("--gt", required=True, help="Ground-truth annotation JSON (videos, categories, annotations).")
            p.add_argument("--pred", required=True, help="Results JSON (video_id, category_id, score, segmentations).")
            continue
        if name in DETECTION:
            p.add_argument("--gt", required=True, help="Ground-truth JSON (COCO instances / LVIS v1 format).")
            p.add_argument("--pred", required=True,
                           help="Detections JSON: a list of {image_id, category_id, bbox: [x, y, w, h], score}.")
            p.add_argument("--max-dets", type=int, default=None,
                           help="COCOeval maxDets (ovcoco default 1000 as F-ViT, OV-DQUO uses 100; lvis default 300).")
        else:
            p.add_argument("--gt", required=True, help="Ground-truth folder.")
            p.add_argument("--pred", required=True, help="Prediction folder (file names matching the ground truth).")
        if name == "ovcoco":
            p.add_argument("--split", default=None,
                           help="JSON {base: [names], novel: [names]} (default: the OV-COCO 48/17 split of F-ViT).")
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
