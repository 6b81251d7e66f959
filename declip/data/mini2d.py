"""The mini 2D world: seeded scenes of coloured, textured shapes over textured stuff, in COCO formats.

Layout (docs/interfaces.md "Mini 2D world"): RGB images per split, COCO instances / panoptic / captions
JSON, panoptic PNGs (id = R + 256 G + 256^2 B), semantic index PNGs (category id - 1, 255 = void) and a
held-out `single` split of one-object images for the tiny CLIP's zero-shot test. MANIFEST.json is
written last, so its presence means the dataset is complete.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from declip.data import render2d
from declip.data.vocab import CATEGORIES, STUFF, THINGS, Category

# Each split draws from its own stream of the seed, so val/single never repeat a train scene.
SPLIT_STREAMS = {"train": 0, "val": 1, "single": 2}
ANNOTATED_SPLITS = ("train", "val")
VOID = 255
BACKDROPS = ("sky", "wall")  # stuff one stands in front of, not on
COUNT_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
MULTI_RADIUS = (0.11, 0.24)  # object radius as a fraction of the image side (multi-object scenes)
SINGLE_RADIUS = (0.2, 0.34)  # larger objects in the held-out single-object split
MIN_VISIBLE = 0.5  # an occluded object keeps at least half of its pixels
MIN_AREA = 40  # pixels; smaller objects are re-placed


@dataclass
class Segment:
    category: Category
    mask: np.ndarray  # bool (H, W), visible pixels
    id: int = 0


@dataclass
class Scene:
    image: np.ndarray  # uint8 (H, W, 3)
    segments: list[Segment] = field(default_factory=list)
    caption: str = ""

    def panoptic_ids(self) -> np.ndarray:
        ids = np.zeros(self.image.shape[:2], dtype=np.int64)
        for seg in self.segments:
            ids[seg.mask] = seg.id
        return ids

    def semantic(self) -> np.ndarray:
        sem = np.full(self.image.shape[:2], VOID, dtype=np.uint8)
        for seg in self.segments:
            sem[seg.mask] = seg.category.id - 1
        return sem


def split_rng(seed: int, split: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, SPLIT_STREAMS[split]]))


def _background(size: int, rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[Category, np.ndarray]], np.ndarray]:
    """Texture image, [(stuff category, region mask)], void mask (the one-pixel seam of a horizon split)."""
    picks = [STUFF[i] for i in rng.choice(len(STUFF), size=int(rng.integers(1, 3)), replace=False)]
    if len(picks) == 1:
        tex = render2d.stuff_texture(picks[0].shape, picks[0].color, size, rng)
        return tex, [(picks[0], np.ones((size, size), dtype=bool))], np.zeros((size, size), dtype=bool)
    if picks[1].name == "sky":  # sky, when present, is the upper region
        picks.reverse()
    top, bottom = picks
    x = np.arange(size) + 0.5
    horizon = (rng.uniform(0.3, 0.7) * size + rng.uniform(-0.25, 0.25) * (x - size / 2)
               + rng.uniform(0, 3) * np.sin(rng.uniform(0.05, 0.2) * x + rng.uniform(0, 2 * np.pi)))
    is_bottom = (np.arange(size)[:, None] + 0.5) > horizon[None, :]
    seam = np.zeros_like(is_bottom)
    seam[1:] = is_bottom[1:] & ~is_bottom[:-1]
    tex_top = render2d.stuff_texture(top.shape, top.color, size, rng)
    tex_bottom = render2d.stuff_texture(bottom.shape, bottom.color, size, rng)
    image = np.where(is_bottom[..., None], tex_bottom, tex_top)
    image[seam] = 0.5 * (tex_top[seam] + tex_bottom[seam])
    return image, [(top, ~is_bottom & ~seam), (bottom, is_bottom & ~seam)], seam


def _place_objects(size: int, cats: list[Category], radius: tuple[float, float], rng: np.random.Generator,
                   image: np.ndarray, tries: int = 15) -> list[Segment]:
    """Paint objects in order (later ones occlude earlier ones), re-placing any that would hide too much."""
    placed: list[Segment] = []
    full_area: list[int] = []
    for cat in cats:
        for _ in range(tries):
            r = rng.uniform(*radius) * size
            cy, cx = rng.uniform(0.6 * r, size - 0.6 * r, size=2)
            u, v = render2d.local_coords(size, cy, cx, r, rng.uniform(-0.25, 0.25))
            mask = render2d.shape_mask(cat.shape, u, v)
            if mask.sum() < MIN_AREA:
                continue
            if all((s.mask & ~mask).sum() >= MIN_VISIBLE * a for s, a in zip(placed, full_area)):
                break
        else:
            continue  # no room left for this object: the scene keeps the ones already placed
        surface = render2d.object_surface(size, cat.color, u, v, rng)
        image[mask] = surface[mask]
        for s in placed:
            s.mask &= ~mask
        placed.append(Segment(cat, mask))
        full_area.append(int(mask.sum()))
    return placed


def noun_phrase(name: str, count: int = 1) -> str:
    """'a chair', 'an apple', 'two lamps'."""
    if count == 1:
        return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"
    return f"{COUNT_WORDS.get(count, str(count))} {name}s"


def caption(things: list[str], stuff: list[str]) -> str:
    """'a photo of a chair and two lamps on grass in front of sky' (things in first-seen order)."""
    counts = {n: things.count(n) for n in dict.fromkeys(things)}
    parts = [noun_phrase(n, c) for n, c in counts.items()]
    objects = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    if not stuff:
        return f"a photo of {objects}"
    if len(stuff) == 1:
        where = f" {'in front of' if stuff[0] in BACKDROPS else 'on'} {stuff[0]}"
    else:
        where = f" on {stuff[-1]} in front of {stuff[0]}"
    return f"a photo of {objects}{where}"


def render_scene(size: int, n_objects: int, rng: np.random.Generator, radius=MULTI_RADIUS,
                 categories: list[Category] | None = None) -> Scene:
    """One scene: stuff background, then `n_objects` things (random classes unless given), then photometric jitter."""
    image, stuff_regions, _ = _background(size, rng)
    cats = categories or [THINGS[i] for i in rng.integers(0, len(THINGS), size=n_objects)]
    things = _place_objects(size, cats, radius, rng, image)
    # Mild global photometric jitter and sensor noise, so colours are never exact class keys.
    contrast, brightness = rng.uniform(0.88, 1.12), rng.uniform(-12, 12)
    image = (image - 128.0) * contrast + 128.0 + brightness + rng.normal(0, 3.0, size=image.shape)
    occupied = np.zeros((size, size), dtype=bool)
    for s in things:
        occupied |= s.mask
    stuff = [Segment(cat, mask & ~occupied) for cat, mask in stuff_regions]
    stuff = [s for s in stuff if s.mask.any()]
    segments = things + stuff
    counters: dict[int, int] = {}
    for seg in segments:  # panoptic id = category * 1000 + k: exercises all three PNG channels
        k = counters.get(seg.category.id, 0)
        counters[seg.category.id] = k + 1
        seg.id = seg.category.id * 1000 + k + 1
    text = caption([s.category.name for s in things], [s.category.name for s in stuff])
    return Scene(np.clip(np.rint(image), 0, 255).astype(np.uint8), segments, text)


def bbox_of(mask: np.ndarray) -> list[int]:
    """COCO box [x, y, w, h] of the pixels of a mask (w, h count pixels)."""
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def ids_to_rgb(ids: np.ndarray) -> np.ndarray:
    """COCO panoptic PNG encoding: id = R + 256 G + 256^2 B (decoded by declip.data.panoptic.load_segment_ids)."""
    return np.stack([ids % 256, ids // 256 % 256, ids // 256 ** 2], axis=-1).astype(np.uint8)


def category_json(things_only: bool = False) -> list[dict]:
    cats = THINGS if things_only else CATEGORIES
    return [{"id": c.id, "name": c.name, "supercategory": "thing" if c.isthing else "stuff",
             "isthing": int(c.isthing), "color": list(c.color)} for c in cats]


def _save_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(array).save(path, compress_level=1)


def _write_json(obj, path: Path) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj))
    tmp.replace(path)


def _write_annotated_split(out: Path, split: str, n: int, world: dict, rng: np.random.Generator, progress) -> dict:
    from pycocotools import mask as mask_utils

    size = world["image_size"]
    for d in (out / split, out / "annotations" / f"panoptic_{split}", out / "semantic" / split):
        d.mkdir(parents=True, exist_ok=True)
    images, instances, panoptic, captions = [], [], [], []
    for image_id in range(1, n + 1):
        scene = render_scene(size, int(rng.integers(world["min_objects"], world["max_objects"] + 1)), rng)
        name = f"{image_id:06d}.png"
        _save_png(scene.image, out / split / name)
        _save_png(ids_to_rgb(scene.panoptic_ids()), out / "annotations" / f"panoptic_{split}" / name)
        _save_png(scene.semantic(), out / "semantic" / split / name)
        images.append({"id": image_id, "file_name": name, "height": size, "width": size})
        captions.append({"id": image_id, "image_id": image_id, "caption": scene.caption})
        infos = []
        for seg in scene.segments:
            box, area = bbox_of(seg.mask), int(seg.mask.sum())
            infos.append({"id": seg.id, "category_id": seg.category.id, "area": area, "bbox": box, "iscrowd": 0})
            if seg.category.isthing:
                rle = mask_utils.encode(np.asfortranarray(seg.mask.astype(np.uint8)))
                rle["counts"] = rle["counts"].decode("ascii")
                instances.append({"id": len(instances) + 1, "image_id": image_id, "category_id": seg.category.id,
                                  "segmentation": rle, "area": area, "bbox": box, "iscrowd": 0})
        panoptic.append({"image_id": image_id, "file_name": name, "segments_info": infos})
        progress.update(1)
    info = {"description": f"declip-repro mini 2D world, split {split}", "seed": world["seed"]}
    ann = out / "annotations"
    _write_json({"info": info, "images": images, "annotations": instances, "categories": category_json(True)},
                ann / f"instances_{split}.json")
    _write_json({"info": info, "images": images, "annotations": panoptic, "categories": category_json()},
                ann / f"panoptic_{split}.json")
    _write_json({"info": info, "images": images, "annotations": captions}, ann / f"captions_{split}.json")
    return {"images": n, "instances": len(instances), "segments": sum(len(p["segments_info"]) for p in panoptic)}


def _write_single_split(out: Path, n: int, world: dict, rng: np.random.Generator, progress) -> dict:
    size = world["image_size"]
    (out / "single").mkdir(parents=True, exist_ok=True)
    classes = rng.permutation(np.arange(n) % len(THINGS))  # balanced: every class equally often
    images = []
    for image_id, k in enumerate(classes, start=1):
        scene = render_scene(size, 1, rng, radius=SINGLE_RADIUS, categories=[THINGS[k]])
        name = f"{image_id:06d}.png"
        _save_png(scene.image, out / "single" / name)
        images.append({"id": image_id, "file_name": name, "category_id": THINGS[k].id})
        progress.update(1)
    _write_json({"images": images, "categories": category_json(True)}, out / "annotations" / "single.json")
    return {"images": n}


def generate(cfg: dict, out_dir: str | Path) -> dict:
    """Write the whole mini 2D world for `cfg["mini"]["world2d"]` under `out_dir`; returns counts."""
    from tqdm import tqdm

    world = cfg["mini"]["world2d"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "MANIFEST.json").unlink(missing_ok=True)
    for stale in ("train", "val", "single", "annotations", "semantic"):  # only the folders this generator owns
        if (out / stale).exists():
            shutil.rmtree(out / stale)
    (out / "annotations").mkdir()
    sizes = {"train": world["n_train"], "val": world["n_val"], "single": world["n_single"]}
    counts = {}
    with tqdm(total=sum(sizes.values()), desc="mini2d", unit="img") as progress:
        for split in ANNOTATED_SPLITS:
            counts[split] = _write_annotated_split(out, split, sizes[split], world, split_rng(world["seed"], split), progress)
        counts["single"] = _write_single_split(out, sizes["single"], world, split_rng(world["seed"], "single"), progress)
    manifest = {"dataset": "mini2d", "format": "mini2d", "world2d": world, "splits": counts,
                "categories": category_json(), "num_classes": len(CATEGORIES), "ignore_index": VOID}
    _write_json(manifest, out / "MANIFEST.json")
    return counts
