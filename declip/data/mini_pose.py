"""The mini pose world: textured primitives on a floor, RGB-D views, written as a BOP dataset with
Oryon-style anchor/query pairs.

`n_objects` models (THINGS categories: name, colour, primitive from `declip.data.vocab`, one seeded
scale each) are placed, `objects_per_scene` at a time, on a checkered floor in `n_scenes` scenes; each
scene is seen from `views_per_scene` cameras looking at the objects (`render3d.look_at`, OpenCV axes).
Frames are rendered with the triangle rasteriser (`declip.data.raster`), the same one the BOP scorer's VSD
uses, so the GT renders and the test depth agree exactly; colours are Lambert-shaded like the 3D world's.

Layout (BOP, bop_toolkit docs/bop_datasets_format.md; units mm):
```
<out>/camera.json, models/models_info.json, models/obj_XXXXXX.ply
<out>/test/<scene:06d>/{scene_camera,scene_gt,scene_gt_info}.json, rgb/, depth/, mask/, mask_visib/
<out>/test_targets_bop19.json          the query views of the pairs (one instance each)
<out>/pairs.json                        [{pair, obj_id, name, prompt, anchor: {scene_id, im_id}, query: {...}}]
<out>/MANIFEST.json                     written last
```
A pair is the same object in two different scenes (Oryon's anchor/query); each query (scene, image,
object) appears in one pair only, so the BOP targets count every pair once.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from declip.data import bop, meshes, ply, raster, render3d
from declip.data.vocab import THINGS, by_name

AMBIENT, LIGHT = 0.8, (0.3, 0.5, 1.0)  # as render3d.render
CHECKER = 0.25  # floor checker size (m)


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, 7, *keys]))


def choose_objects(wcfg: dict) -> list[dict]:
    """The models: category, scale, mesh (metres, centred), per-face colours."""
    rng = _rng(wcfg["seed"], 0)
    cats = [THINGS[int(k)] for k in rng.permutation(len(THINGS))[:wcfg["n_objects"]]]
    out = []
    for i, cat in enumerate(cats, start=1):
        scale = float(rng.uniform(*wcfg["scale_range"]))
        v, f = meshes.primitive_mesh(cat.primitive, scale)
        out.append({"obj_id": i, "name": cat.name, "primitive": cat.primitive, "scale": scale, "vertices": v,
                    "faces": f, "colors": meshes.face_colors(v, f, cat.color)})
    return out


def _floor(half: float):
    n = int(np.ceil(2 * half / CHECKER))
    s = np.linspace(-half, half, n + 1)
    X, Y = np.meshgrid(s, s, indexing="ij")
    v = np.column_stack([X.ravel(), Y.ravel(), np.zeros(X.size)])
    faces, colors = [], []
    base = np.asarray(by_name("floor").color, float)
    for i in range(n):
        for j in range(n):
            a, b, c, d = i * (n + 1) + j, (i + 1) * (n + 1) + j, i * (n + 1) + j + 1, (i + 1) * (n + 1) + j + 1
            faces += [[a, b, d], [a, d, c]]
            colors += [base * (1.0 if (i + j) % 2 == 0 else 0.8)] * 2
    return v, np.asarray(faces), np.asarray(colors)


def scene_layout(wcfg: dict, objects: list[dict], scene: int) -> list[tuple[dict, np.ndarray]]:
    """(object, model-to-world 4x4) of the scene's objects, standing on the floor without overlap;
    scene s holds objects s, s+1, ... (mod n_objects), so each object appears in several scenes."""
    rng = _rng(wcfg["seed"], 1, scene)
    chosen = [objects[(scene + k) % len(objects)] for k in range(wcfg["objects_per_scene"])]
    placed: list[tuple[dict, np.ndarray]] = []
    spots: list[tuple[float, float, float]] = []
    for obj in chosen:
        radius = float(np.linalg.norm(obj["vertices"][:, :2], axis=1).max())
        for _ in range(500):
            r, a = wcfg["placement_radius"] * np.sqrt(rng.random()), rng.uniform(0, 2 * np.pi)
            x, y = r * np.cos(a), r * np.sin(a)
            if all(np.hypot(x - px, y - py) > radius + pr + wcfg["min_gap"] for px, py, pr in spots):
                break
        spots.append((x, y, radius))
        yaw = rng.uniform(0, 2 * np.pi)
        T = np.eye(4)
        T[:3, :3] = [[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]]
        T[:3, 3] = (x, y, -obj["vertices"][:, 2].min())  # resting on z = 0
        placed.append((obj, T))
    return placed


def camera_poses(wcfg: dict, scene: int) -> list[np.ndarray]:
    rng = _rng(wcfg["seed"], 2, scene)
    poses = []
    for _ in range(wcfg["views_per_scene"]):
        a = rng.uniform(0, 2 * np.pi)
        r, h = rng.uniform(*wcfg["camera_distance"]), rng.uniform(*wcfg["camera_height"])
        poses.append(render3d.look_at((r * np.cos(a), r * np.sin(a), h), (*rng.normal(0, 0.05, 2), 0.15)))
    return poses


def render_view(placed, floor, pose: np.ndarray, K: np.ndarray, width: int, height: int) -> dict:
    """RGB, depth (m), visible-object map (-1 none, else index into `placed`) of one view."""
    world2cam = np.linalg.inv(pose)
    verts, faces, colors, owner, normals = [], [], [], [], []
    n = 0
    for k, (obj, T) in enumerate(list(placed) + [(None, np.eye(4))]):
        v, f, c = (floor if obj is None else (obj["vertices"], obj["faces"], obj["colors"]))
        vw = v @ T[:3, :3].T + T[:3, 3]
        verts.append(vw)
        faces.append(f + n)
        colors.append(c)
        normals.append(meshes.face_normals(vw, f))
        owner.append(np.full(len(f), -1 if obj is None else k))
        n += len(v)
    verts, faces = np.concatenate(verts), np.concatenate(faces)
    depth, face = raster.rasterize(verts, faces, K, width, height, world2cam[:3, :3], world2cam[:3, 3])
    light = np.asarray(LIGHT) / np.linalg.norm(LIGHT)
    shade = AMBIENT + (1 - AMBIENT) * np.abs(np.concatenate(normals) @ light)  # two-sided
    shaded = np.clip(np.concatenate(colors) * shade[:, None], 0, 255)
    rgb = np.zeros((height, width, 3), np.uint8)
    hit = face >= 0
    rgb[hit] = np.rint(shaded[face[hit]]).astype(np.uint8)
    visible = np.full((height, width), -1)
    visible[hit] = np.concatenate(owner)[face[hit]]
    return {"rgb": rgb, "depth": depth, "visible": visible}


def _save_png(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def write_models(out: Path, objects: list[dict]) -> None:
    info = {}
    for obj in objects:
        v_mm = obj["vertices"] * 1000.0
        # BOP models carry vertex colours; a face's colour goes to its vertices (last write wins)
        col = np.zeros((len(v_mm), 3), np.uint8)
        col[obj["faces"].ravel()] = np.repeat(np.rint(obj["colors"]).astype(np.uint8), 3, axis=0)
        ply.write_ply(bop.model_path(out / "models", obj["obj_id"]), ply.Mesh(v_mm, obj["faces"], col))
        diff = v_mm[:, None, :] - v_mm[None, :, :]
        lo, hi = v_mm.min(0), v_mm.max(0)
        info[str(obj["obj_id"])] = {"diameter": float(np.sqrt((diff ** 2).sum(-1)).max()),
                                    "min_x": lo[0], "min_y": lo[1], "min_z": lo[2],
                                    "size_x": hi[0] - lo[0], "size_y": hi[1] - lo[1], "size_z": hi[2] - lo[2],
                                    **meshes.symmetries(obj["primitive"])}
    bop.save_json(out / "models" / "models_info.json", {k: {kk: (float(vv) if isinstance(vv, np.floating) else vv)
                                                            for kk, vv in d.items()} for k, d in info.items()})


def write_scene(out: Path, wcfg: dict, objects: list[dict], scene: int, K: np.ndarray, floor) -> list[dict]:
    """Render and write one scene; returns per (im_id, obj_id) its visib_fract."""
    w, h = wcfg["width"], wcfg["height"]
    placed = scene_layout(wcfg, objects, scene)
    folder = bop.scene_dir(out, "test", scene)
    cams, gts, infos, seen = {}, {}, {}, []
    for im_id, pose in enumerate(camera_poses(wcfg, scene)):
        view = render_view(placed, floor, pose, K, w, h)
        _save_png(folder / "rgb" / f"{im_id:06d}.png", view["rgb"])
        _save_png(folder / "depth" / f"{im_id:06d}.png", np.clip(np.rint(view["depth"] * 1000), 0, 65535).astype(np.uint16))
        world2cam = np.linalg.inv(pose)
        cams[str(im_id)] = {"cam_K": K.ravel().tolist(), "depth_scale": 1.0}
        gts[str(im_id)], infos[str(im_id)] = [], []
        for k, (obj, T) in enumerate(placed):
            m2c = world2cam @ T
            gts[str(im_id)].append({"obj_id": obj["obj_id"], **bop.pose_to_json(m2c[:3, :3], m2c[:3, 3] * 1000.0)})
            alone = raster.render_depth(obj["vertices"], obj["faces"], K, w, h, m2c[:3, :3], m2c[:3, 3]) > 0
            vis = view["visible"] == k
            _save_png(folder / "mask" / f"{im_id:06d}_{k:06d}.png", (alone * 255).astype(np.uint8))
            _save_png(folder / "mask_visib" / f"{im_id:06d}_{k:06d}.png", (vis * 255).astype(np.uint8))
            n_all, n_vis = int(alone.sum()), int(vis.sum())
            infos[str(im_id)].append({"px_count_all": n_all, "px_count_valid": n_all, "px_count_visib": n_vis,
                                      "visib_fract": n_vis / n_all if n_all else 0.0})
            seen.append({"scene_id": scene, "im_id": im_id, "obj_id": obj["obj_id"],
                         "visib_fract": infos[str(im_id)][-1]["visib_fract"]})
    bop.save_json(folder / "scene_camera.json", cams)
    bop.save_json(folder / "scene_gt.json", gts)
    bop.save_json(folder / "scene_gt_info.json", infos)
    return seen


def make_pairs(wcfg: dict, objects: list[dict], seen: list[dict], prompt: str) -> list[dict]:
    """Anchor/query pairs of one object in two different scenes, both at least `min_visib` visible; every
    query view used once; at most `n_pairs`, drawn with the world's seed."""
    rng = _rng(wcfg["seed"], 3)
    good = [s for s in seen if s["visib_fract"] >= wcfg["min_visib"]]
    names = {o["obj_id"]: o["name"] for o in objects}
    candidates = []
    for q in good:
        anchors = [a for a in good if a["obj_id"] == q["obj_id"] and a["scene_id"] != q["scene_id"]]
        if anchors:
            a = anchors[int(rng.integers(len(anchors)))]
            candidates.append((a, q))
    order = rng.permutation(len(candidates))[:wcfg["n_pairs"]]
    pairs = []
    for i, k in enumerate(sorted(order)):
        a, q = candidates[k]
        pairs.append({"pair": i, "obj_id": q["obj_id"], "name": names[q["obj_id"]],
                      "prompt": prompt.format(names[q["obj_id"]]),
                      "anchor": {"scene_id": a["scene_id"], "im_id": a["im_id"]},
                      "query": {"scene_id": q["scene_id"], "im_id": q["im_id"]}})
    return pairs


def generate(cfg: dict, out_dir: Path) -> dict:
    """Write the mini pose dataset (config `mini.worldpose`) to `out_dir`; MANIFEST.json last."""
    wcfg = cfg["mini"]["worldpose"]
    out = Path(out_dir)
    shutil.rmtree(out, ignore_errors=True)  # a stale world never mixes with a new one
    out.mkdir(parents=True)
    objects = choose_objects(wcfg)
    write_models(out, objects)
    K = render3d.intrinsics(wcfg["width"], wcfg["height"], wcfg["fov_deg"])
    bop.save_json(out / "camera.json", {"width": wcfg["width"], "height": wcfg["height"], "depth_scale": 1.0,
                                        "fx": K[0, 0], "fy": K[1, 1], "cx": K[0, 2], "cy": K[1, 2]})
    floor = _floor(wcfg["floor_size"] / 2)
    from tqdm import tqdm

    seen = []
    for scene in tqdm(range(1, wcfg["n_scenes"] + 1), desc="mini pose scenes", unit="scene"):
        seen += write_scene(out, wcfg, objects, scene, K, floor)
    pairs = make_pairs(wcfg, objects, seen, wcfg["prompt"])
    bop.save_json(out / "pairs.json", pairs)
    bop.save_json(out / bop.TARGETS_FILE, [{"scene_id": p["query"]["scene_id"], "im_id": p["query"]["im_id"],
                                            "obj_id": p["obj_id"], "inst_count": 1} for p in pairs])
    counts = {"objects": len(objects), "scenes": wcfg["n_scenes"], "images": wcfg["n_scenes"] * wcfg["views_per_scene"],
              "pairs": len(pairs)}
    manifest = {"dataset": "mini_pose", "format": "bop", "counts": counts, "worldpose": wcfg,
                "objects": {o["obj_id"]: o["name"] for o in objects}}
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1))
    return counts
