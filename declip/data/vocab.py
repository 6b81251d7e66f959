"""The mini world's vocabulary, shared by the 2D and 3D generators and the tiny CLIP's captions.

Thing names are real ScanNet200 categories (ids from the ScanNet200 benchmark's label map), so the
same names serve 2D panoptic/semantic annotations, the pretraining captions and the 3D scenes'
`label_id*1000 + instance_id` ground truth. Appearance (colour, 2D shape, 3D primitive) is what the
tiny CLIP learns to associate with each name; colours are far apart so that a 64-pixel model can
tell them apart.
"""

from __future__ import annotations

from dataclasses import dataclass

from declip.data.scannet200 import ID_OF


@dataclass(frozen=True)
class Category:
    id: int  # COCO-style category id in the mini world (1-based, things first)
    name: str
    isthing: bool
    color: tuple[int, int, int]
    shape: str  # 2D: circle|square|triangle|star|ring|diamond|cross|hexagon|rect_wide|rect_tall; stuff: texture
    primitive: str | None = None  # 3D: box|cylinder|sphere|cone|flat_box|tall_box|tall_cylinder

    @property
    def scannet_id(self) -> int | None:
        """ScanNet200 label id of a thing (None for stuff)."""
        return ID_OF[self.name] if self.isthing else None


THINGS: tuple[Category, ...] = (
    Category(1, "chair", True, (220, 30, 30), "square", "box"),
    Category(2, "table", True, (140, 90, 40), "rect_wide", "flat_box"),
    Category(3, "lamp", True, (250, 220, 40), "triangle", "cone"),
    Category(4, "bottle", True, (40, 180, 60), "rect_tall", "tall_cylinder"),
    Category(5, "bucket", True, (40, 80, 230), "circle", "cylinder"),
    Category(6, "clock", True, (245, 245, 245), "ring", "cylinder"),
    Category(7, "ball", True, (255, 140, 0), "hexagon", "sphere"),
    Category(8, "fire extinguisher", True, (200, 40, 200), "diamond", "tall_cylinder"),
    Category(9, "backpack", True, (30, 200, 200), "cross", "box"),
    Category(10, "pillow", True, (255, 170, 200), "star", "flat_box"),
)

STUFF: tuple[Category, ...] = (
    Category(11, "grass", False, (60, 120, 40), "noise"),
    Category(12, "sky", False, (120, 170, 235), "gradient"),
    Category(13, "wall", False, (150, 150, 150), "bricks"),
    Category(14, "floor", False, (170, 130, 90), "stripes"),
    Category(15, "water", False, (30, 60, 120), "waves"),
)

CATEGORIES: tuple[Category, ...] = THINGS + STUFF


def by_name(name: str) -> Category:
    for c in CATEGORIES:
        if c.name == name:
            return c
    raise KeyError(f"unknown mini-world category {name!r}; known: {[c.name for c in CATEGORIES]}")
