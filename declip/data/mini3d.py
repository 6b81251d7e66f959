"""The mini 3D world: seeded rooms of primitive objects in the ScanNet200 evaluation layout.

Each scene is a floor (and walls) with `mini.world3d.min_objects`..`max_objects` primitives, one per THINGS
category draw (shape and colour from `declip.data.vocab`; draws cycle through every category, see
`scene_categories`). Its vertex set is the jittered-grid surface sample of every object and of the
room; GT follows the ScanNet200 instance files (`label_id * 1000 + instance_id` per vertex, instances
1-based; walls and the floor are annotated instances as in ScanNet, and the instance benchmark treats
them as void).
Posed RGB-D frames are rendered on the CPU by `declip.data.render3d` from a camera circling inside the room.

Layout (mirrors OpenMask3D's per-scene folders and the benchmark's GT files):
```
<out>/val.txt                                   scene names, one a line (scannetv2_val.txt analogue)
<out>/scans/<scene>/<scene>_vert.npy            (N, 6) float32: x y z (m), r g b (0-255)
<out>/scans/<scene>/color/<i>.png               RGB frames
<out>/scans/<scene>/depth/<i>.png               uint16 depth in millimetres, 0 = invalid
<out>/scans/<scene>/pose/<i>.txt                4x4 camera-to-world
<out>/scans/<scene>/intrinsic/intrinsic_{color,depth}.txt   4x4 (ScanNet SensReader format)
<out>/gt/<scene>.txt                            one int per vertex: label_id*1000 + instance_id, 0 = unannotated
<out>/proposals/openmask3d/<scene>_masks.pt     torch (N, K) 0/1: class-agnostic masks (GT instances here)
<out>/proposals/open3dis/<scene>.pth            {"ins": (K, N) bool, "conf": (K,)}: GT masks + 2D-lifted masks
<out>/MANIFEST.json                             written last
```
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from declip.data import render3d
from declip.data.scannet200 import ID_OF
from declip.data.vocab import THINGS, by_name

FLOOR_ID, WALL_ID = ID_OF["floor"], ID_OF["wall"]
# Open3DIS keeps a 2D-lifted proposal only if it is not a duplicate of a 3D one (final_instance.iou_overlap 0.9)
# and has enough points (cluster.valid_points 50), configs/scannet200.yaml of the Open3DIS code.
LIFTED_DUPLICATE_IOU = 0.9
LIFTED_MIN_POINTS = 50


@dataclass
class Scene3D:
    name: str
    vertices: np.ndarray  # (N, 6) float32 xyz rgb
    gt: np.ndarray  # (N,) int64 label*1000 + instance
    surface: render3d.Surface
    object_ids: list[int]  # GT ids (label*1000+inst) of the objects, in instance order
    poses: np.ndarray  # (F, 4, 4) camera-to-world
    K: np.ndarray  # (3, 3)


def scene_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, 3, index]))


def object_counts(seed: int, wcfg: dict) -> np.ndarray:
    rng = np.random.default_rng(np.random.SeedSequence([seed, 4]))
    return rng.integers(wcfg["min_objects"], wcfg["max_objects"] + 1, size=wcfg["n_scenes"])


def scene_categories(seed: int, index: int, wcfg: dict) -> list:
    """Categories of scene `index`: consecutive draws from a deck of shuffled THINGS permutations shared by
    the dataset, so every category (hence the head, common and tail splits) appears once the scenes hold
    10 objects in all, and no scene repeats a category before the deck is used up."""
    counts = object_counts(seed, wcfg)
    start, n = int(counts[:index].sum()), int(counts[index])
    rng = np.random.default_rng(np.random.SeedSequence([seed, 5]))
    n_decks = (start + n) // len(THINGS) + 1
    deck = np.concatenate([rng.permutation(len(THINGS)) for _ in range(n_decks)])
    return [THINGS[int(k)] for k in deck[start:start + n]]


def _place_objects(rng, categories: list, wcfg: dict) -> list[tuple]:
    """(category, scale, yaw, x, y) for non-overlapping objects inside the placement disc."""
    placed: list[tuple] = []
    for cat in categories:
        scale = float(rng.uniform(*wcfg["scale_range"]))
        radius = render3d.footprint_radius(cat.primitive, scale)
        for _attempt in range(200):
            r = wcfg["placement_radius"] * np.sqrt(rng.random())
            a = rng.uniform(0, 2 * np.pi)
            x, y = r * np.cos(a), r * np.sin(a)
            if all(np.hypot(x - px, y - py) > radius + pr + wcfg["min_gap"] for _, _, _, px, py, pr in placed):
                placed.append((cat, scale, float(rng.uniform(0, 2 * np.pi)), x, y, radius))
                break
    if len(placed) < wcfg["min_objects"]:
        raise RuntimeError("could not place the minimum number of objects; enlarge mini.world3d.placement_radius")
    return [p[:5] for p in placed]


def _room(rng, wcfg: dict) -> list[tuple[render3d.Surface, int, tuple]]:
    """Floor (label floor) and optional four walls (label wall), each an annotated instance as in ScanNet."""
    h, wh, s = wcfg["room_size"] / 2, wcfg["wall_height"], wcfg["spacing_background"]
    floor_c, wall_c = by_name("floor").color, by_name("wall").color
    parts = [(render3d.rectangle((-h, -h, 0), (2 * h, 0, 0), (0, 2 * h, 0), s, rng), FLOOR_ID, floor_c)]
    if wcfg["walls"]:
        # each wall's normal points into the room
        for origin, eu in [((-h, -h, 0), (2 * h, 0, 0)), ((h, -h, 0), (0, 2 * h, 0)),
                           ((h, h, 0), (-2 * h, 0, 0)), ((-h, h, 0), (0, -2 * h, 0))]:
            parts.append((render3d.rectangle(origin, eu, (0, 0, wh), s, rng), WALL_ID, wall_c))
    return parts


def camera_path(rng, wcfg: dict, n_frames: int) -> np.ndarray:
    """Poses on a circle inside the room, looking at the middle of the object area (ScanNet-like scan)."""
    phase = rng.uniform(0, 2 * np.pi)
    lo, hi = wcfg["camera_height"]
    poses = []
    for i in range(n_frames):
        a = phase + 2 * np.pi * i / n_frames
        r = wcfg["camera_radius"] * rng.uniform(0.93, 1.05)
        eye = (r * np.cos(a), r * np.sin(a), rng.uniform(lo, hi))
        target = (*rng.normal(0, 0.15, 2), 0.25)
        poses.append(render3d.look_at(eye, target))
    return np.stack(poses)


def build_scene(seed: int, index: int, wcfg: dict) -> Scene3D:
    """The scene's geometry, vertex colours, GT ids and camera path (deterministic for (seed, index))."""
    rng = scene_rng(seed, index)
    surfaces, colors, gt, object_ids = [], [], [], []
    inst = 0
    for cat, scale, yaw, x, y in _place_objects(rng, scene_categories(seed, index, wcfg), wcfg):
        local = render3d.primitive(cat.primitive, scale, wcfg["spacing_object"], rng)
        if len(local) < wcfg["min_object_vertices"]:  # keep every instance above the benchmark's minimum size
            spacing = wcfg["spacing_object"] * np.sqrt(len(local) / (1.2 * wcfg["min_object_vertices"]))
            local = render3d.primitive(cat.primitive, scale, spacing, rng)
        inst += 1
        surfaces.append(render3d.transform(local, yaw, (x, y, 0.0)))
        colors.append(np.broadcast_to(np.asarray(cat.color, dtype=np.float64), (len(local), 3)))
        gt.append(np.full(len(local), cat.scannet_id * 1000 + inst, dtype=np.int64))
        object_ids.append(cat.scannet_id * 1000 + inst)
    for surf, label, color in _room(rng, wcfg):
        inst += 1
        surfaces.append(surf)
        colors.append(np.broadcast_to(np.asarray(color, dtype=np.float64), (len(surf), 3)))
        gt.append(np.full(len(surf), label * 1000 + inst, dtype=np.int64))
    surface = render3d.concat(surfaces)
    # vertex colours as a scanner records them: the surface colour with a little noise
    color = np.clip(np.concatenate(colors) + rng.normal(0, 4, (len(surface), 3)), 0, 255)
    vertices = np.concatenate([surface.points, color], 1).astype(np.float32)
    K = render3d.intrinsics(wcfg["width"], wcfg["height"], wcfg["fov_deg"])
    return Scene3D(f"scene{index:04d}_00", vertices, np.concatenate(gt), surface, object_ids,
                   camera_path(rng, wcfg, wcfg["n_frames"]), K)


def _k4(K: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = K
    return out


def lifted_proposals(scene: Scene3D, seen: np.ndarray) -> list[np.ndarray]:
    """Open3DIS-style 2D-lifted masks for the mini world: per object, the vertices seen in some frame
    (what lifting per-frame 2D masks can recover), kept when not a duplicate of the 3D proposal."""
    out = []
    for oid in scene.object_ids:
        full = scene.gt == oid
        part = full & seen
        iou = part.sum() / full.sum()
        if part.sum() >= LIFTED_MIN_POINTS and iou <= LIFTED_DUPLICATE_IOU:
            out.append(part)
    return out


def write_scene(scene: Scene3D, out: Path, wcfg: dict) -> dict:
    import torch
    from PIL import Image

    folder = out / "scans" / scene.name
    for sub in ("color", "depth", "pose", "intrinsic"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    np.save(folder / f"{scene.name}_vert.npy", scene.vertices)
    np.savetxt(folder / "intrinsic" / "intrinsic_color.txt", _k4(scene.K), fmt="%.6f")
    np.savetxt(folder / "intrinsic" / "intrinsic_depth.txt", _k4(scene.K), fmt="%.6f")
    seen = np.zeros(len(scene.gt), dtype=bool)
    colors = scene.vertices[:, 3:6].astype(np.float64)
    for i, pose in enumerate(scene.poses):
        frame = render3d.render(scene.surface, colors, pose, scene.K, wcfg["width"], wcfg["height"])
        Image.fromarray(frame.rgb).save(folder / "color" / f"{i}.png")
        depth_mm = np.clip(np.rint(frame.depth * 1000.0), 0, 65535).astype(np.uint16)
        Image.fromarray(depth_mm).save(folder / "depth" / f"{i}.png")
        np.savetxt(folder / "pose" / f"{i}.txt", pose, fmt="%.6f")
        seen[frame.index[frame.index >= 0]] = True
    (out / "gt").mkdir(parents=True, exist_ok=True)
    np.savetxt(out / "gt" / f"{scene.name}.txt", scene.gt, fmt="%d")
    masks3d = np.stack([scene.gt == oid for oid in scene.object_ids])  # (K, N)
    (out / "proposals" / "openmask3d").mkdir(parents=True, exist_ok=True)
    torch.save(torch.from_numpy(masks3d.T.astype(np.uint8)), out / "proposals" / "openmask3d" / f"{scene.name}_masks.pt")
    lifted = lifted_proposals(scene, seen)
    ins = np.concatenate([masks3d, np.stack(lifted)]) if lifted else masks3d
    (out / "proposals" / "open3dis").mkdir(parents=True, exist_ok=True)
    torch.save({"ins": torch.from_numpy(ins), "conf": torch.ones(len(ins))},
               out / "proposals" / "open3dis" / f"{scene.name}.pth")
    return {"vertices": len(scene.gt), "objects": len(scene.object_ids), "frames": len(scene.poses),
            "open3dis_lifted": len(lifted)}


def generate(cfg: dict, out_dir: Path) -> dict:
    """Write the mini 3D dataset (config `mini.world3d`) to `out_dir`; returns counts. MANIFEST.json last."""
    from tqdm import tqdm

    wcfg = cfg["mini"]["world3d"]
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    names, counts = [], {"scenes": 0, "vertices": 0, "objects": 0, "frames": 0, "open3dis_lifted": 0}
    for index in tqdm(range(wcfg["n_scenes"]), desc="mini3d scenes", unit="scene"):
        scene = build_scene(wcfg["seed"], index, wcfg)
        for key, value in write_scene(scene, out, wcfg).items():
            counts[key] += value
        counts["scenes"] += 1
        names.append(scene.name)
    (out / "val.txt").write_text("".join(n + "\n" for n in names))
    manifest = {"dataset": "mini3d", "format": "scannet", "scenes": names, "counts": counts, "world3d": wcfg}
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1))
    return counts
