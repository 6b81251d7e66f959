"""`declip dataset <mini2d|mini3d|mini_pose|mini_video|download>`: synthesise a mini world or download a full-scale dataset."""

from __future__ import annotations

import argparse


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="dataset_verb", required=True, metavar="SUBVERB")
    worlds = {  # sub-verb: help; each writes its root's MANIFEST.json last
        "mini2d": "Generate the mini 2D world (COCO instances/panoptic/captions, semantic PNGs).",
        "mini3d": "Generate the mini 3D world (ScanNet format).",
        "mini_pose": "Generate the mini pose world (BOP format with anchor/query pairs).",
        "mini_video": "Generate the mini video world (YouTube-VIS layout, LV-VIS partitions).",
    }
    for name, help_text in worlds.items():
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--out", default=f"data/{name}", help="Dataset root; MANIFEST.json is written there last.")
        p.set_defaults(_sub=globals()[name])
    p = sub.add_parser("download", help="Download and verify a full-scale dataset or weights from its manifest.")
    p.add_argument("--dataset", required=True, help="Manifest name (workflow/manifests/<name>.yaml) or a manifest path.")
    p.add_argument("--out", required=True, help="Marker JSON written when every file is verified (the rule's output).")
    p.add_argument("--root", default=None, help="Where the files go (default: the manifest's root).")
    p.set_defaults(_sub=download)
    p = sub.add_parser("ovcoco", help="Derive an OV-COCO split annotation file (65 classes) from COCO 2017 instances.")
    p.add_argument("--instances", required=True, help="COCO instances_<split>2017.json.")
    p.add_argument("--keep", choices=["base", "all"], required=True,
                   help="base: the 48 base classes' annotations (training file); all: the 65 classes (evaluation file).")
    p.add_argument("--out", required=True, help="Annotation file to write.")
    p.set_defaults(_sub=ovcoco)
    for p in sub.choices.values():  # let --job/--configfile also follow the sub-verb, without clobbering them
        p.add_argument("--job", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        p.add_argument("--configfile", action="append", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def run(args, cfg) -> dict:
    return args._sub(args, cfg)


def mini2d(args, cfg) -> dict:
    from declip.config import resolve_path
    from declip.data.mini2d import generate

    out = resolve_path(args.out)
    generate(cfg, out)  # its counts are in MANIFEST.json, which the tracking layer reads
    return {"artifacts": [str(out / "MANIFEST.json")]}


def mini3d(args, cfg) -> dict:
    from declip.config import resolve_path
    from declip.data import mini3d as gen

    gen.generate(cfg, resolve_path(args.out))  # counts: MANIFEST.json (the rule's output)
    return {}


def mini_pose(args, cfg) -> dict:
    from declip.config import resolve_path
    from declip.data import mini_pose as gen

    gen.generate(cfg, resolve_path(args.out))  # counts: MANIFEST.json (the rule's output)
def mini_video(args, cfg) -> dict:
    from declip.config import resolve_path
    from declip.data.mini_video import generate

    generate(cfg, resolve_path(args.out))  # counts: MANIFEST.json (the rule's output)
    return {}


def download(args, cfg) -> dict:
    from declip.data.download import download_dataset

    result = download_dataset(args.dataset, args.root, args.out)
    files = result["files"]
    return {"metrics": {"files": len(files), "bytes": sum(f.get("size", 0) for f in files),
                        "published_checksums": sum(f.get("verified", "").startswith("published") for f in files)},
            "artifacts": [args.out]}



def ovcoco(args, cfg) -> dict:
    from declip.config import resolve_path
    from declip.data.detection import ovcoco_split

    counts = ovcoco_split(resolve_path(args.instances), resolve_path(args.out), args.keep)
    return {"metrics": counts, "artifacts": [args.out]}
