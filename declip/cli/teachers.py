"""`declip teachers`: extract one teacher's outputs for every image of a dataset into the cache (resumable)."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--dataset", required=True, help="A key of `datasets` (e.g. mini2d, coco_train2017).")
    parser.add_argument("--teacher", required=True, help="vfm:<name> (a key of teachers.vfms) or sd.")
    parser.add_argument("--out", required=True, help="cache/teachers/<dataset>/<teacher>/index.json (written last).")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1 ...")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice).")


def run(args, cfg) -> dict:
    from declip.distill.cache import extract

    index = extract(cfg, args.dataset, args.teacher, args.out, device=args.device)
    # Throughput and retained mass are numbers in index.json (read by the tracking layer); lists are not.
    metrics = {"images": len(index["image_ids"]), "shards": len(index["shards"])}
    return {"metrics": metrics, "artifacts": [args.out]}
