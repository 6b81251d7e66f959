"""Reader of COCO-panoptic annotations in the official format (JSON + PNG per image).

Layout (COCO 2017 and the mini world alike): `{root}/annotations/panoptic_{split}.json`,
`{root}/annotations/panoptic_{split}/<png>` with segment id = R + 256 G + 256^2 B, images in
`{root}/{split}/<file_name>`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from declip.config import resolve_path
from declip.data.images import image_dir
from declip.errors import UserFacingError


@dataclass(frozen=True)
class Segment:
    id: int
    category_id: int
    bbox: tuple[float, float, float, float]  # x, y, w, h in image pixels (COCO)
    isthing: bool
    area: int
    iscrowd: int = 0


@dataclass
class PanopticImage:
    image_id: int
    image_path: Path
    png_path: Path
    width: int
    height: int
    segments: list[Segment] = field(default_factory=list)


@dataclass
class PanopticDataset:
    categories: list[dict]  # sorted by id, each with id, name, isthing
    images: list[PanopticImage]

    @property
    def label_of(self) -> dict[int, int]:
        """category id -> contiguous label 0..K-1 in id order (CLIPSelf's cat_id2label)."""
        return {c["id"]: i for i, c in enumerate(self.categories)}

    @property
    def names(self) -> list[str]:
        return [c["name"] for c in self.categories]


def panoptic_paths(dataset_spec: dict) -> tuple[Path, Path, Path]:
    """(json, png folder, image folder) of a dataset spec with `root` and `split`."""
    root = resolve_path(dataset_spec["root"])
    split = dataset_spec.get("split", "val2017")
    ann = root / "annotations"
    return ann / f"panoptic_{split}.json", ann / f"panoptic_{split}", image_dir(dataset_spec)


def read_panoptic(json_path: str | Path, png_dir: str | Path, images_dir: str | Path) -> PanopticDataset:
    json_path, png_dir, images_dir = Path(json_path), Path(png_dir), Path(images_dir)
    if not json_path.exists():
        raise UserFacingError(f"panoptic annotations {json_path} not found: run the dataset step first")
    with open(json_path) as f:
        data = json.load(f)
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise UserFacingError(f"{json_path} is not a COCO-panoptic file: no {key!r} list")
    categories = sorted(data["categories"], key=lambda c: c["id"])
    isthing = {c["id"]: bool(c.get("isthing", 1)) for c in categories}
    info = {im["id"]: im for im in data["images"]}
    images = []
    for ann in sorted(data["annotations"], key=lambda a: a["image_id"]):
        im = info.get(ann["image_id"])
        if im is None:
            raise UserFacingError(f"{json_path}: annotation for unknown image id {ann['image_id']}")
        segs = [
            Segment(int(s["id"]), int(s["category_id"]), tuple(float(v) for v in s["bbox"]),
                    isthing[s["category_id"]], int(s.get("area", 0)), int(s.get("iscrowd", 0)))
            for s in ann["segments_info"]
        ]
        images.append(PanopticImage(int(im["id"]), images_dir / im["file_name"], png_dir / ann["file_name"],
                                    int(im["width"]), int(im["height"]), segs))
    return PanopticDataset(categories, images)


def load_segment_ids(png_path: str | Path):
    """(H, W) int64 array of segment ids, id = R + 256 G + 256^2 B (panopticapi rgb2id)."""
    import numpy as np
    from PIL import Image

    with Image.open(png_path) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
