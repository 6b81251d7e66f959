"""Reader for video instance segmentation sets in the YouTube-VIS layout (YouTube-VIS 2019/2021, OVIS, LV-VIS,
the mini video world), and for track proposals in the YouTube-VIS results format.

A dataset spec (`datasets.<name>`) gives `root`, `annotations` (the JSON with `videos`, `categories` and,
where public, `annotations`; relative to root), `frames` (the folder the videos' `file_names` are relative to)
and `gt_public` (false for YouTube-VIS and OVIS val, whose annotations only the evaluation servers hold).
Track proposals are JSON lists of {video_id, score, segmentations} (any `category_id` is ignored), the format
every VIS method's results come in, so a mask generator's class-agnostic tracks plug in as they are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from declip.errors import UserFacingError

ORACLE = "oracle"


@dataclass
class VideoSet:
    name: str
    root: Path
    frames_dir: Path
    videos: dict  # id -> video dict (height, width, length, file_names)
    categories: list  # [{id, name, partition?}] in file order
    gt: dict  # the whole annotation JSON
    gt_public: bool

    @property
    def class_names(self) -> list[str]:
        # LVIS-style names (LV-VIS) use underscores: prompts read them as words
        return [c["name"].replace("_", " ") for c in self.categories]

    def frame_path(self, video: dict, t: int) -> Path:
        return self.frames_dir / video["file_names"][t]


def load_video_set(name: str, spec: dict) -> VideoSet:
    root = Path(spec["root"])
    ann_path = root / spec.get("annotations", "valid.json")
    if not ann_path.is_file():
        hint = spec.get("instructions") or f"run the workflow's dataset step for {name!r} first"
        raise UserFacingError(f"{name}: annotation file {ann_path} is missing; {hint}")
    gt = json.loads(ann_path.read_text())
    for key in ("videos", "categories"):
        if key not in gt:
            raise UserFacingError(f"{ann_path} has no `{key}`: not a YouTube-VIS annotation file")
    gt_public = bool(spec.get("gt_public", True)) and bool(gt.get("annotations"))
    return VideoSet(name, root, root / spec.get("frames", "valid/JPEGImages"), {v["id"]: v for v in gt["videos"]},
                    list(gt["categories"]), gt, gt_public)


def oracle_tracks(vs: VideoSet) -> list[dict]:
    """GT tracks as class-agnostic proposals (objectness 1); crowd regions are not objects to classify."""
    if not vs.gt_public:
        raise UserFacingError(f"{vs.name}: oracle tracks need the ground truth, which is not public for this set; "
                              "use a proposals file (evaluate.ovvis.tracks)")
    return [{"video_id": a["video_id"], "score": 1.0, "segmentations": a["segmentations"]}
            for a in vs.gt["annotations"] if not a.get("iscrowd", 0)]


def read_proposals(path: Path, vs: VideoSet) -> list[dict]:
    if not path.is_file():
        raise UserFacingError(f"track proposals {path} do not exist: export your mask generator's class-agnostic tracks "
                              "there as a YouTube-VIS results JSON ([{video_id, score, segmentations}])")
    props = json.loads(path.read_text())
    if not isinstance(props, list):
        raise UserFacingError(f"{path}: expected a JSON list of {{video_id, score, segmentations}}")
    for k, p in enumerate(props):
        if p.get("video_id") not in vs.videos or "segmentations" not in p:
            raise UserFacingError(f"{path}: entry {k} needs a video_id of {vs.name} and per-frame segmentations")
    return props


def load_tracks(vs: VideoSet, source: str, spec: dict) -> list[dict]:
    """`oracle` (GT tracks) or a key of the dataset's `proposals` mapping (a file relative to root)."""
    if source == ORACLE:
        return oracle_tracks(vs)
    files = spec.get("proposals") or {}
    if source not in files:
        raise UserFacingError(f"track source {source!r} is neither `oracle` nor a key of datasets.{vs.name}.proposals "
                              f"({', '.join(files) or 'none configured'})")
    return read_proposals(vs.root / files[source], vs)


def to_rle(seg, h: int, w: int):
    """Compressed RLE (bytes counts) of one frame's segmentation: polygons (parts merged, as ytvos.py annToRLE),
    uncompressed RLE (YouTube-VIS GT) or compressed RLE (results); None for a null frame."""
    from pycocotools import mask as mask_utils

    if not seg:
        return None
    if isinstance(seg, list):
        return mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    if isinstance(seg.get("counts"), list):
        return mask_utils.frPyObjects(seg, h, w)
    counts = seg["counts"]
    return {"size": seg["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def decode(seg, h: int, w: int) -> np.ndarray | None:
    """Bool (h, w) mask of one frame's segmentation, None for a null or empty frame."""
    from pycocotools import mask as mask_utils

    rle = to_rle(seg, h, w)
    if rle is None:
        return None
    m = mask_utils.decode(rle).astype(bool)
    return m if m.any() else None
