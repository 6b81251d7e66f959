"""Box-annotated datasets for open-vocabulary detection: COCO instances (mini world, OV-COCO) and LVIS v1.

One reader for the three layouts (protocols.md section 3):
- mini2d:  <root>/annotations/instances_<split>.json, images <root>/<split>/;
- coco_ov: <root>/<annotations> (default annotations/instances_<split>.json; the OV-COCO files of
           `declip dataset` or F-ViT's released zero-shot files), images <root>/<split>/;
- lvis:    <root>/<annotations> (default annotations/lvis_v1_<split>.json), images found from each
           image's `coco_url` (LVIS v1 reuses COCO 2017: <images>/<train2017|val2017>/<file>).
The base / novel split (`split_names`) follows the scorer: OV-COCO = F-ViT's 48/17 name lists, LVIS =
frequency r is novel (OV-LVIS), or the names listed in `evaluate.ovd.novel` (the mini world).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from declip.config import resolve_path
from declip.errors import UserFacingError

FORMATS = ("mini2d", "coco_ov", "lvis")


@dataclass
class DetImage:
    id: int
    path: Path
    width: int
    height: int
    boxes: list = field(default_factory=list)  # [x1, y1, x2, y2] of non-crowd annotations
    category_ids: list = field(default_factory=list)


@dataclass
class DetectionDataset:
    gt_path: Path  # the ground-truth file the scorer reads
    gt: dict  # its content
    categories: list[dict]  # sorted by id
    images: list[DetImage]

    @property
    def names(self) -> list[str]:
        return [c["name"] for c in self.categories]


def detection_format(spec: dict) -> str:
    fmt = spec.get("format", "mini2d")
    if fmt not in FORMATS:
        raise UserFacingError(f"dataset format {fmt!r} has no box reader; use one of {', '.join(FORMATS)}")
    return fmt


def annotation_path(spec: dict) -> Path:
    root = resolve_path(spec["root"])
    if spec.get("annotations"):
        return root / spec["annotations"]
    stem = "lvis_v1_{}" if detection_format(spec) == "lvis" else "instances_{}"
    return root / "annotations" / (stem.format(spec["split"]) + ".json")


def _image_path(spec: dict, im: dict) -> Path:
    root = resolve_path(spec["root"])
    images = root / spec["images"] if spec.get("images") else root
    if "file_name" in im and detection_format(spec) != "lvis":
        return images / spec.get("split", "") / im["file_name"]
    # LVIS v1: coco_url = http://images.cocodataset.org/<train2017|val2017>/<file>
    parts = str(im.get("coco_url", im.get("file_name", ""))).rstrip("/").split("/")
    return images.joinpath(*parts[-2:])


def read_detection(spec: dict) -> DetectionDataset:
    """The dataset with the non-crowd boxes of each image (`gt` keeps every annotation, for the scorer)."""
    path = annotation_path(spec)
    if not path.is_file():
        raise UserFacingError(f"box annotations {path} not found: run the dataset step for {spec['root']} first")
    gt = json.loads(path.read_text())
    for key in ("images", "annotations", "categories"):
        if key not in gt:
            raise UserFacingError(f"{path} is not a COCO/LVIS instances file: no {key!r} list")
    categories = sorted(gt["categories"], key=lambda c: c["id"])
    name_of = {c["id"]: c["name"] for c in categories}
    images = {im["id"]: DetImage(int(im["id"]), _image_path(spec, im), int(im["width"]), int(im["height"]))
              for im in gt["images"]}
    for a in gt["annotations"]:
        if a.get("iscrowd", 0):
            continue
        x, y, w, h = a["bbox"]
        if w < 1 or h < 1:  # F-ViT coco_ov.py _parse_ann_info skips these
            continue
        im = images.get(a["image_id"])
        if im is None:
            raise UserFacingError(f"{path}: annotation {a.get('id')} refers to unknown image {a['image_id']}")
        im.boxes.append([x, y, x + w, y + h])
        im.category_ids.append(a["category_id"])
    return DetectionDataset(path, gt, categories, sorted(images.values(), key=lambda i: i.id))


def drop_categories(data: DetectionDataset, names: set[str]) -> DetectionDataset:
    """The same dataset without the boxes of the named categories (the detector's base-only training set)."""
    drop = {c["id"] for c in data.categories if c["name"] in names}
    images = []
    for im in data.images:
        keep = [i for i, c in enumerate(im.category_ids) if c not in drop]
        images.append(DetImage(im.id, im.path, im.width, im.height, [im.boxes[i] for i in keep],
                               [im.category_ids[i] for i in keep]))
    return DetectionDataset(data.gt_path, data.gt, data.categories, images)


def split_names(settings: dict, categories: list[dict]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(base names, novel names) of the evaluated categories (see the module docstring)."""
    names = [c["name"] for c in categories]
    if settings.get("novel"):
        novel = tuple(settings["novel"])
        missing = sorted(set(novel) - set(names))
        if missing:
            raise UserFacingError(f"evaluate.ovd.novel names {missing} are not categories of the dataset ({names})")
        return tuple(n for n in names if n not in novel), novel
    if settings["scorer"] == "lvis":
        return (tuple(c["name"] for c in categories if c.get("frequency") != "r"),
                tuple(c["name"] for c in categories if c.get("frequency") == "r"))
    from declip.metrics.ovcoco import OVCOCO_BASE, OVCOCO_NOVEL

    return OVCOCO_BASE, OVCOCO_NOVEL


def ovcoco_split(instances: Path, out: Path, keep: str) -> dict:
    """Write an OV-COCO annotation file from COCO 2017 instances: the 65 categories of the split (F-ViT
    mscoco_65_classes = 48 base + 17 novel), the annotations of the kept classes (`base` for training as in
    instances_train2017_seen_2_65_cat.json, `all` 65 for evaluation as in instances_val2017_all_2.json) and
    the images that keep at least one annotation (our reading of those released files' construction)."""
    from declip.metrics.ovcoco import OVCOCO_BASE, OVCOCO_NOVEL

    if not instances.is_file():
        raise UserFacingError(f"COCO instances file {instances} not found: run the `download` rule for coco first")
    src = json.loads(instances.read_text())
    names = set(OVCOCO_BASE) | set(OVCOCO_NOVEL)
    cats = [c for c in src["categories"] if c["name"] in names]
    if len(cats) != len(names):
        missing = sorted(names - {c["name"] for c in cats})
        raise UserFacingError(f"{instances} lacks OV-COCO categories {missing}: is it a COCO 2017 instances file?")
    kept_ids = {c["id"] for c in cats if keep == "all" or c["name"] in OVCOCO_BASE}
    anns = [a for a in src["annotations"] if a["category_id"] in kept_ids]
    image_ids = {a["image_id"] for a in anns}
    images = [im for im in src["images"] if im["id"] in image_ids]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps({"info": src.get("info", {}), "licenses": src.get("licenses", []), "images": images,
                               "annotations": anns, "categories": cats}))
    tmp.replace(out)
    return {"images": len(images), "annotations": len(anns), "categories": len(cats)}
