"""The BOP dataset format (bop_toolkit docs/bop_datasets_format.md): readers and writers.

```
<root>/models[_eval]/models_info.json      {obj_id: {diameter, min_x.., symmetries_discrete?, symmetries_continuous?}}
<root>/models[_eval]/obj_XXXXXX.ply        mm
<root>/camera.json                          {width, height, ...} (optional here; else the depth image size)
<root>/<split>/<scene:06d>/scene_camera.json  {im_id: {cam_K (9), depth_scale, ...}}
<root>/<split>/<scene:06d>/scene_gt.json      {im_id: [{obj_id, cam_R_m2c (9), cam_t_m2c (3, mm)}]}
<root>/<split>/<scene:06d>/scene_gt_info.json {im_id: [{visib_fract, px_count_*, bbox_*}]}
<root>/<split>/<scene:06d>/{rgb,depth,mask,mask_visib}/...
<root>/test_targets_bop19.json              [{scene_id, im_id, obj_id, inst_count}]
```
Results (BOP19 CSV): `scene_id,im_id,obj_id,score,R,t,time`, R 9 and t 3 space-separated values (t in mm).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from declip.errors import UserFacingError

TARGETS_FILE = "test_targets_bop19.json"
RESULTS_HEADER = ("scene_id", "im_id", "obj_id", "score", "R", "t", "time")


@dataclass
class Estimate:
    scene_id: int
    im_id: int
    obj_id: int
    score: float
    R: np.ndarray  # (3, 3)
    t: np.ndarray  # (3, 1) mm
    time: float = -1.0


def load_json(path: Path, int_keys: bool = True):
    path = Path(path)
    if not path.is_file():
        raise UserFacingError(f"{path} does not exist: is the BOP dataset root right and complete?")
    data = json.loads(path.read_text())
    if int_keys and isinstance(data, dict):
        return {int(k): v for k, v in data.items()}
    return data


def save_json(path: Path, data) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=1))


def models_dir(root: Path) -> Path:
    """`models_eval/` when present (what bop_toolkit's eval scripts load), else `models/`."""
    root = Path(root)
    for name in ("models_eval", "models"):
        if (root / name / "models_info.json").is_file():
            return root / name
    raise UserFacingError(f"no models_eval/models_info.json or models/models_info.json under {root}")


def model_path(models: Path, obj_id: int) -> Path:
    return Path(models) / f"obj_{obj_id:06d}.ply"


def scene_dir(root: Path, split: str, scene_id: int) -> Path:
    return Path(root) / split / f"{scene_id:06d}"


def load_scene_gt(path: Path) -> dict:
    """{im_id: [{obj_id, R (3,3), t (3,1)}]}."""
    out = {}
    for im_id, gts in load_json(path).items():
        out[im_id] = [{"obj_id": int(g["obj_id"]), "R": np.asarray(g["cam_R_m2c"], float).reshape(3, 3),
                       "t": np.asarray(g["cam_t_m2c"], float).reshape(3, 1)} for g in gts]
    return out


def load_scene_camera(path: Path) -> dict:
    """{im_id: {K (3,3), depth_scale}}."""
    return {im_id: {"K": np.asarray(c["cam_K"], float).reshape(3, 3), "depth_scale": float(c.get("depth_scale", 1.0))}
            for im_id, c in load_json(path).items()}


def load_depth(path: Path) -> np.ndarray:
    from PIL import Image

    if not Path(path).is_file():
        raise UserFacingError(f"depth image {path} does not exist")
    with Image.open(path) as im:
        return np.asarray(im, dtype=np.float64)


def depth_path(root: Path, split: str, scene_id: int, im_id: int) -> Path:
    folder = scene_dir(root, split, scene_id) / "depth"
    for ext in (".png", ".tif"):
        p = folder / f"{im_id:06d}{ext}"
        if p.is_file():
            return p
    return folder / f"{im_id:06d}.png"


def image_width(root: Path, split: str, scene_id: int, im_id: int) -> int:
    """Image width: `camera.json` at the root when it gives one (BOP datasets ship it), else the depth image's."""
    cam = Path(root) / "camera.json"
    if cam.is_file():
        data = json.loads(cam.read_text())
        if "width" in data:
            return int(data["width"])
    return int(load_depth(depth_path(root, split, scene_id, im_id)).shape[1])


def load_targets(root: Path, name: str = TARGETS_FILE) -> list[dict]:
    return [{k: int(t[k]) for k in ("scene_id", "im_id", "obj_id", "inst_count")}
            for t in load_json(Path(root) / name, int_keys=False)]


def read_results(path: Path) -> list[Estimate]:
    """BOP19 results CSV (bop_toolkit_lib/inout.py load_bop_results): header line, one estimate a line."""
    path = Path(path)
    if not path.is_file():
        raise UserFacingError(f"results file {path} does not exist")
    out = []
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or tuple(c.strip() for c in rows[0]) != RESULTS_HEADER:
        raise UserFacingError(f"{path}: first line must be the BOP19 header {','.join(RESULTS_HEADER)}")
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != 7:
            raise UserFacingError(f"{path}:{line}: expected 7 comma-separated fields, got {len(row)}")
        R = np.asarray(row[4].split(), float)
        t = np.asarray(row[5].split(), float)
        if R.size != 9 or t.size != 3:
            raise UserFacingError(f"{path}:{line}: R needs 9 and t 3 space-separated values")
        out.append(Estimate(int(row[0]), int(row[1]), int(row[2]), float(row[3]), R.reshape(3, 3), t.reshape(3, 1),
                            float(row[6])))
    return out


def write_results(path: Path, estimates: list[Estimate]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        f.write(",".join(RESULTS_HEADER) + "\n")
        for e in estimates:
            R = " ".join(f"{v:.8f}" for v in np.asarray(e.R).ravel())
            t = " ".join(f"{v:.6f}" for v in np.asarray(e.t).ravel())
            f.write(f"{e.scene_id},{e.im_id},{e.obj_id},{e.score:.6f},{R},{t},{e.time:.4f}\n")


def pose_to_json(R: np.ndarray, t: np.ndarray) -> dict:
    return {"cam_R_m2c": [float(v) for v in np.asarray(R).ravel()], "cam_t_m2c": [float(v) for v in np.asarray(t).ravel()]}
