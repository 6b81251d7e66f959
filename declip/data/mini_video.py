"""The mini video world: short seeded clips of the mini 2D world's objects, in the YouTube-VIS layout.

Each clip is a static mini-2D background (`mini2d._background`: stuff textures) with `min_objects`..`max_objects`
THINGS moving in straight lines while turning; objects are painted in depth order, so later ones occlude
earlier ones, and a share of them (`enter_leave`) enter or leave the frame across the border. A frame where an object
has no visible pixel has a null segmentation, as in YouTube-VIS. Each object keeps its appearance over the
clip (its surface is drawn from its own seed every frame). The vocabulary is `declip.data.vocab.THINGS`;
`mini.video.novel` names the novel categories (LV-VIS `partition`: base 0, novel 2; the tiny CLIP saw every
name in pretraining, so novel only splits the scores here).

Layout (LV-VIS / YouTube-VIS val):
```
<out>/valid/JPEGImages/<video>/<frame:05d>.jpg   RGB frames
<out>/valid.json                                  GT: videos (file_names), categories (partition), annotations
                                                  (per-frame compressed RLE or null, areas, bboxes, iscrowd 0)
<out>/proposals/imperfect.json                    class-agnostic track proposals in the results format
                                                  ({video_id, score, segmentations}) derived from the GT
<out>/MANIFEST.json                               written last
```
Imperfect proposals (our choice, so that AP is not trivially high): every GT track, each frame's mask
eroded or dilated by `proposal_morph` pixels, each non-null frame dropped with `proposal_drop`, in a clip with
two or more tracks (with probability `proposal_switch`) the first two swap identities for the last quarter, plus
`proposal_distractors` background tracks per clip (a drifting box over the stuff); objectness 1.0.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from declip.data import mini2d, render2d
from declip.data.vocab import THINGS

BASE_PARTITION, NOVEL_PARTITION = 0, 2
SPLIT = "valid"


def video_rng(seed: int, index: int, stream: int = 0) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, 6, index, stream]))


def categories_json(novel: list[str]) -> list[dict]:
    unknown = sorted(set(novel) - {c.name for c in THINGS})
    if unknown:
        from declip.errors import UserFacingError

        raise UserFacingError(f"mini.video.novel names {unknown} that are not mini-world things; "
                              f"allowed: {', '.join(c.name for c in THINGS)}")
    return [{"id": c.id, "name": c.name, "supercategory": "thing",
             "partition": NOVEL_PARTITION if c.name in novel else BASE_PARTITION} for c in THINGS]


def _object_tracks(size: int, n_frames: int, n_objects: int, vcfg: dict, rng) -> list[dict]:
    """Kinematics per object: centre at the middle frame (`mid`), constant velocity and spin. With probability
    `enter_leave` an object instead crosses the border: it starts (enters) or ends (leaves) fully outside."""
    objs = []
    t_mid = (n_frames - 1) / 2
    for k in rng.integers(0, len(THINGS), size=n_objects):
        r = rng.uniform(*mini2d.MULTI_RADIUS) * size
        speed = rng.uniform(*vcfg["speed"]) * size
        theta = rng.uniform(0, 2 * np.pi)
        mid = rng.uniform(0.1 * size, 0.9 * size, size=2)
        vel = speed * np.array([np.sin(theta), np.cos(theta)])
        if rng.random() < vcfg["enter_leave"]:
            inside = rng.uniform(0.3 * size, 0.7 * size, size=2)
            axis, side = int(rng.integers(2)), int(rng.integers(2))
            outside = inside.copy()
            outside[axis] = -1.5 * r if side == 0 else size + 1.5 * r  # no pixel of the shape reaches the frame
            start, end = (outside, inside) if rng.random() < 0.5 else (inside, outside)
            vel = (end - start) / max(n_frames - 1, 1)
            mid = start + vel * t_mid
        objs.append({"cat": THINGS[int(k)], "r": r, "mid": mid, "vel": vel, "angle": rng.uniform(-0.25, 0.25),
                     "spin": rng.uniform(-0.08, 0.08), "seed": int(rng.integers(2 ** 31))})
    return objs


def render_clip(size: int, n_frames: int, n_objects: int, vcfg: dict, rng) -> tuple[list[np.ndarray], list[dict]]:
    """Frames (uint8 H x W x 3) and per object {category, masks: [bool (H, W)] visible pixels per frame}."""
    background, _, _ = mini2d._background(size, rng)
    objs = _object_tracks(size, n_frames, n_objects, vcfg, rng)
    contrast, brightness = rng.uniform(0.88, 1.12), rng.uniform(-12, 12)
    frames, visible = [], [[] for _ in objs]
    t_mid = (n_frames - 1) / 2
    for t in range(n_frames):
        image = background.copy()
        masks = []
        for o in objs:
            cy, cx = o["mid"] + o["vel"] * (t - t_mid)
            u, v = render2d.local_coords(size, cy, cx, o["r"], o["angle"] + o["spin"] * t)
            mask = render2d.shape_mask(o["cat"].shape, u, v)
            surface = render2d.object_surface(size, o["cat"].color, u, v, np.random.default_rng(o["seed"]))
            image[mask] = surface[mask]
            for m in masks:  # painted later = in front
                m &= ~mask
            masks.append(mask)
        for j, m in enumerate(masks):
            visible[j].append(m)
        image = (image - 128.0) * contrast + 128.0 + brightness + rng.normal(0, 3.0, size=image.shape)
        frames.append(np.clip(np.rint(image), 0, 255).astype(np.uint8))
    tracks = [{"category": o["cat"], "masks": vis} for o, vis in zip(objs, visible) if any(m.any() for m in vis)]
    return frames, tracks


def encode(mask: np.ndarray | None) -> dict | None:
    """Compressed RLE (counts as text) of a non-empty mask, else None (a null frame)."""
    from pycocotools import mask as mask_utils

    if mask is None or not mask.any():
        return None
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _morph(mask: np.ndarray, pixels: int, dilate: bool) -> np.ndarray:
    from scipy import ndimage

    op = ndimage.binary_dilation if dilate else ndimage.binary_erosion
    return op(mask, iterations=pixels)


def imperfect_proposals(clips: dict[int, list[list[np.ndarray | None]]], size: int, vcfg: dict, seed: int) -> list[dict]:
    """Class-agnostic tracks in the results format, degraded from the GT tracks (see the module docstring)."""
    out = []
    for vid, tracks in clips.items():
        rng = video_rng(seed, vid, stream=1)
        n_frames = len(tracks[0]) if tracks else 0
        degraded = []
        for masks in tracks:
            dilate = bool(rng.random() < 0.5)
            seq = []
            for m in masks:
                if m is None or not m.any() or rng.random() < vcfg["proposal_drop"]:
                    seq.append(None)
                    continue
                mm = _morph(m, vcfg["proposal_morph"], dilate)
                seq.append(mm if mm.any() else None)
            degraded.append(seq)
        if len(degraded) >= 2 and rng.random() < vcfg["proposal_switch"]:  # identity switch late in the clip
            t = int(round(0.75 * n_frames))
            degraded[0][t:], degraded[1][t:] = degraded[1][t:], degraded[0][t:]
        for _ in range(vcfg["proposal_distractors"]):
            h, w = (rng.uniform(0.15, 0.35, size=2) * size).astype(int) + 1
            y, x = rng.uniform(0, size - h), rng.uniform(0, size - w)
            dy, dx = rng.uniform(-2, 2, size=2)
            seq = []
            for t in range(n_frames):
                m = np.zeros((size, size), dtype=bool)
                y0, x0 = int(np.clip(y + dy * t, 0, size - h)), int(np.clip(x + dx * t, 0, size - w))
                m[y0:y0 + h, x0:x0 + w] = True
                seq.append(m)
            degraded.append(seq)
        for seq in degraded:
            if any(m is not None for m in seq):
                out.append({"video_id": vid, "score": 1.0, "segmentations": [encode(m) for m in seq]})
    return out


def _write_json(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj))
    tmp.replace(path)


def generate(cfg: dict, out_dir: str | Path) -> dict:
    """Write the mini video world for `cfg["mini"]["video"]` under `out_dir`; returns counts."""
    from PIL import Image
    from tqdm import tqdm

    vcfg = cfg["mini"]["video"]
    size, n_frames, seed = vcfg["image_size"], vcfg["n_frames"], vcfg["seed"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "MANIFEST.json").unlink(missing_ok=True)
    for stale in (SPLIT, "proposals"):
        if (out / stale).exists():
            shutil.rmtree(out / stale)
    (out / "proposals").mkdir()
    videos, anns, gt_masks = [], [], {}
    null_frames = 0
    for vid in tqdm(range(1, vcfg["n_videos"] + 1), desc="mini_video", unit="clip"):
        rng = video_rng(seed, vid)
        n_obj = int(rng.integers(vcfg["min_objects"], vcfg["max_objects"] + 1))
        frames, tracks = render_clip(size, n_frames, n_obj, vcfg, rng)
        name = f"{vid:05d}"
        folder = out / SPLIT / "JPEGImages" / name
        folder.mkdir(parents=True)
        for t, frame in enumerate(frames):
            Image.fromarray(frame).save(folder / f"{t:05d}.jpg", quality=vcfg["jpeg_quality"])
        videos.append({"id": vid, "name": name, "width": size, "height": size, "length": n_frames,
                       "file_names": [f"{name}/{t:05d}.jpg" for t in range(n_frames)]})
        gt_masks[vid] = []
        for tr in tracks:
            masks = [m if m.any() else None for m in tr["masks"]]
            null_frames += sum(m is None for m in masks)
            gt_masks[vid].append(masks)
            anns.append({"id": len(anns) + 1, "video_id": vid, "category_id": tr["category"].id, "iscrowd": 0,
                         "width": size, "height": size, "length": 1,
                         "segmentations": [encode(m) for m in masks],
                         "areas": [int(m.sum()) if m is not None else None for m in masks],
                         "bboxes": [mini2d.bbox_of(m) if m is not None else None for m in masks]})
    info = {"description": "declip-repro mini video world (YouTube-VIS layout)", "seed": seed}
    _write_json({"info": info, "videos": videos, "categories": categories_json(vcfg["novel"]), "annotations": anns},
                out / f"{SPLIT}.json")
    proposals = imperfect_proposals(gt_masks, size, vcfg, seed)
    _write_json(proposals, out / "proposals" / "imperfect.json")
    counts = {"videos": len(videos), "frames": len(videos) * n_frames, "tracks": len(anns),
              "null_frames": null_frames, "imperfect_proposals": len(proposals)}
    _write_json({"dataset": "mini_video", "format": "ytvis", "video": vcfg, "counts": counts,
                 "annotations": f"{SPLIT}.json", "frames": f"{SPLIT}/JPEGImages"}, out / "MANIFEST.json")
    return counts
