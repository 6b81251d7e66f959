"""BOP 6D pose scoring: AR_VSD, AR_MSSD, AR_MSPD, AR and ADD(S)-0.1d, on the official BOP formats.

A clean-room re-implementation of bop_toolkit's `scripts/eval_bop19_pose.py` (which runs
`eval_calc_errors.py` then `eval_calc_scores.py`), localization mode, rule by rule:
- targets: `test_targets_bop19.json` (built by the toolkit with visib_fract >= 0.1); only its images and
  objects are evaluated (eval_calc_errors.py, `targets_org`).
- estimates: per target (image, object) the `inst_count` highest-scored ones (n_top = -1; ties keep file
  order, Python's stable sort); the rest are ignored (eval_calc_errors.py).
- valid GT: per image, GT instances sorted by visib_fract (descending, stable), the first `inst_count`
  of each target object are valid, all others are not (eval_calc_scores.py, visib_gt_min = -1 branch).
- errors are computed against every GT instance of the object (valid or not), normalised: MSSD and
  ADD/ADI by the object diameter, MSPD multiplied by 640 / image width (eval_calc_scores.py).
- matching (pose_matching.py match_poses): estimates in decreasing score, each takes the unmatched valid
  GT with the lowest error, only if error < threshold (strict); a GT takes at most one estimate.
- recall = matched valid GT / valid GT over the whole dataset (score.py calc_localization_scores, 0 if
  none); AR_X = mean recall over X's thresholds (and VSD's taus); AR = mean of the three (percent here).
- MSSD/ADD/ADI are infinite when the centre distance is >= the diameter; VSD is 1 for every tau when the
  bounding-sphere projections do not overlap (misc.overlapping_sphere_projections) (eval_calc_errors.py).
- symmetries: identity + `symmetries_discrete`, each composed with `symmetries_continuous` discretised in
  ceil(pi / 0.01) steps (misc.get_symmetry_transformations, max_sym_disc_step 0.01).
- VSD (pose_error.vsd, 'step' cost, bop19 visibility): depth renders of the model in both poses, distance
  images (not depth), delta 15 mm, taus 0.05..0.5 x diameter; thresholds 0.05..0.5.
- ADD(S)-0.1d (not part of AR): ADD, or ADI (ADD-S) for objects that declare a symmetry, error < 0.1 x
  diameter, with the same targets and matching.
Models come from `models_eval/` when present, else `models/` (mm).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from declip.data import bop, ply, raster
from declip.errors import UserFacingError

log = logging.getLogger(__name__)

# eval_bop19_pose.py `p["errors"]`; np.arange reproduces the toolkit's float values exactly.
VSD_TAUS = tuple(float(x) for x in np.arange(0.05, 0.51, 0.05))
VSD_THRESHOLDS = tuple(float(x) for x in np.arange(0.05, 0.51, 0.05))
MSSD_THRESHOLDS = tuple(float(x) for x in np.arange(0.05, 0.51, 0.05))
MSPD_THRESHOLDS = tuple(float(x) for x in np.arange(5, 51, 5))
VSD_DELTA = 15.0  # mm, every BOP19 dataset except ITODD
ADD_THRESHOLD = 0.1  # x diameter
MAX_SYM_DISC_STEP = 0.01
MSPD_REFERENCE_WIDTH = 640.0


# ---------------------------------------------------------------------------------------------- geometry
def axis_angle(axis, angle: float) -> np.ndarray:
    """Rotation matrix about a (not necessarily unit) axis through the origin (Rodrigues)."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def symmetry_transforms(info: dict, max_step: float = MAX_SYM_DISC_STEP) -> list[tuple[np.ndarray, np.ndarray]]:
    """(R, t (3,1)) symmetry transformations of a model (misc.get_symmetry_transformations): identity and
    the discrete ones, each composed with every discretised continuous one (when any)."""
    disc = [(np.eye(3), np.zeros((3, 1)))]
    for sym in info.get("symmetries_discrete", []) or []:
        m = np.asarray(sym, dtype=np.float64).reshape(4, 4)
        disc.append((m[:3, :3], m[:3, 3:4]))
    cont = []
    for sym in info.get("symmetries_continuous", []) or []:
        offset = np.asarray(sym["offset"], dtype=np.float64).reshape(3, 1)
        steps = int(np.ceil(np.pi / max_step))
        for i in range(steps):
            R = axis_angle(sym["axis"], i * 2.0 * np.pi / steps)
            cont.append((R, offset - R @ offset))
    if not cont:
        return disc
    return [(Rc @ Rd, Rc @ td + tc) for Rd, td in disc for Rc, tc in cont]


def is_symmetric(info: dict) -> bool:
    return bool(info.get("symmetries_discrete")) or bool(info.get("symmetries_continuous"))


def transform(pts: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    return pts @ R.T + t.reshape(1, 3)


def _gt_sym_points(pts, R_g, t_g, syms) -> np.ndarray:
    """(S, N, 3) model points in the GT pose composed with each symmetry: R_g (R_s p + t_s) + t_g."""
    Rs = np.stack([R_g @ R for R, _ in syms])  # (S, 3, 3)
    ts = np.stack([(R_g @ t).ravel() + t_g.ravel() for _, t in syms])  # (S, 3)
    return np.matmul(pts[None], Rs.transpose(0, 2, 1)) + ts[:, None, :]


def _project(p: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Pinhole projection of (..., 3) camera points (misc.project_pts)."""
    h = p @ K.T
    return h[..., :2] / h[..., 2:3]


def mssd(R_e, t_e, R_g, t_g, pts, syms, gt_sym=None) -> float:
    """Max over model points of the 3D distance, min over symmetries (pose_error.mssd); `gt_sym`:
    precomputed `_gt_sym_points`."""
    est = transform(pts, R_e, t_e)
    gt = _gt_sym_points(pts, R_g, t_g, syms) if gt_sym is None else gt_sym
    return float(np.sqrt(((gt - est[None]) ** 2).sum(axis=2).max(axis=1).min()))


def mspd(R_e, t_e, R_g, t_g, K, pts, syms, gt_sym=None) -> float:
    """Max over model points of the 2D projection distance (px), min over symmetries (pose_error.mspd)."""
    est = _project(transform(pts, R_e, t_e), K)
    gt = _project(_gt_sym_points(pts, R_g, t_g, syms) if gt_sym is None else gt_sym, K)
    return float(np.sqrt(((gt - est[None]) ** 2).sum(axis=2).max(axis=1).min()))


def add(R_e, t_e, R_g, t_g, pts) -> float:
    """Mean distance between corresponding model points (pose_error.add)."""
    return float(np.linalg.norm(transform(pts, R_e, t_e) - transform(pts, R_g, t_g), axis=1).mean())


def adi(R_e, t_e, R_g, t_g, pts) -> float:
    """ADD-S: mean distance from each GT-posed point to the nearest estimated-posed point (pose_error.adi)."""
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(transform(pts, R_e, t_e)).query(transform(pts, R_g, t_g), k=1)
    return float(dist.mean())


def spheres_overlap(t_e, t_g, diameter: float) -> bool:
    return bool(np.linalg.norm(np.asarray(t_e).ravel() - np.asarray(t_g).ravel()) < diameter)


def sphere_projections_overlap(radius: float, p1, p2) -> bool:
    """misc.overlapping_sphere_projections: centres projected on the normalised image plane are closer
    than the sum of the approximate projected radii."""
    p1, p2 = np.asarray(p1, float).ravel(), np.asarray(p2, float).ravel()
    if p1[2] == 0 or p2[2] == 0:
        return False
    dist = np.linalg.norm(p1[:2] / p1[2] - p2[:2] / p2[2])
    return bool(dist < radius * (1.0 / p1[2] + 1.0 / p2[2]))


def distance_image(depth: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Distance from the camera centre of the point seen at each pixel (misc.depth_im_to_dist_im_fast)."""
    h, w = depth.shape
    xs, ys = np.meshgrid(np.arange(w), np.arange(h))
    X = (xs - K[0, 2]) / K[0, 0] * depth
    Y = (ys - K[1, 2]) / K[1, 1] * depth
    return np.sqrt(X ** 2 + Y ** 2 + depth.astype(np.float64) ** 2)


def visib_mask(dist_test: np.ndarray, dist_model: np.ndarray, delta: float) -> np.ndarray:
    """bop19 visibility (visibility._estimate_visib_mask): visible where the model is rendered and lies
    at most delta behind the test surface, or where the test depth is missing."""
    diff = dist_model.astype(np.float32) - dist_test.astype(np.float32)
    return ((diff <= delta) | (dist_test == 0)) & (dist_model > 0)


def vsd(depth_est: np.ndarray, depth_gt: np.ndarray, depth_test: np.ndarray, K, delta: float, taus,
        diameter: float) -> list[float]:
    """pose_error.vsd with 'step' cost and errors normalised by the diameter, from depth renders (mm)."""
    dist_test = distance_image(depth_test, K)
    dist_gt = distance_image(depth_gt, K)
    dist_est = distance_image(depth_est, K)
    vis_gt = visib_mask(dist_test, dist_gt, delta)
    vis_est = visib_mask(dist_test, dist_est, delta) | (vis_gt & (dist_est > 0))
    inter = vis_gt & vis_est
    union = int((vis_gt | vis_est).sum())
    if union == 0:
        return [1.0] * len(taus)
    comp = union - int(inter.sum())
    dists = np.abs(dist_gt[inter] - dist_est[inter]) / diameter
    return [float((np.sum(dists >= tau) + comp) / float(union)) for tau in taus]


# ------------------------------------------------------------------------------------------- the dataset
class Models:
    """Object models (mm) and their info, loaded on first use, with symmetry transforms cached."""

    def __init__(self, root: Path):
        self.dir = bop.models_dir(root)
        self.info = bop.load_json(self.dir / "models_info.json")
        self._mesh: dict[int, ply.Mesh] = {}
        self._syms: dict[int, list] = {}

    def mesh(self, obj_id: int) -> ply.Mesh:
        if obj_id not in self._mesh:
            self._mesh[obj_id] = ply.read_ply(bop.model_path(self.dir, obj_id))
        return self._mesh[obj_id]

    def syms(self, obj_id: int) -> list:
        if obj_id not in self._syms:
            self._syms[obj_id] = symmetry_transforms(self.info[obj_id])
        return self._syms[obj_id]

    def diameter(self, obj_id: int) -> float:
        if obj_id not in self.info:
            raise UserFacingError(f"object {obj_id} is not in {self.dir / 'models_info.json'}")
        return float(self.info[obj_id]["diameter"])


def valid_gt(im_gt: list, im_gt_info: list, im_targets: dict) -> list[bool]:
    """Per GT instance: counted or not (eval_calc_scores.py, visib_gt_min < 0): the inst_count most
    visible instances of each target object."""
    order = sorted(range(len(im_gt)), key=lambda i: im_gt_info[i]["visib_fract"], reverse=True)
    left = {obj: t["inst_count"] for obj, t in im_targets.items()}
    valid = [False] * len(im_gt)
    for i in order:
        obj = im_gt[i]["obj_id"]
        if left.get(obj, 0) > 0:
            valid[i] = True
            left[obj] -= 1
    return valid


def match(ests: list[dict], thresholds, valid: list[bool], key: str, index=None) -> set[int]:
    """GT ids matched by the greedy matching (pose_matching.match_poses) under `thresholds` (one per error
    element). `ests` (already the evaluated top ones) hold `score` and `errors[key]`: {gt_id: error list};
    `index` picks one element of each error list (VSD: the tau)."""
    matched: list[int] = []
    for e in sorted(ests, key=lambda e: e["score"], reverse=True):
        best_gt, best = -1, list(thresholds)
        for gt_id, err in e["errors"][key].items():
            err = [err[index]] if index is not None else err
            if valid[gt_id] and gt_id not in matched and all(err[i] < best[i] for i in range(len(best))):
                best_gt, best = gt_id, err
        if best_gt >= 0:
            matched.append(best_gt)
    return set(matched)


def _estimate_errors(est: bop.Estimate, gts: list, models: Models, K, width: int, depth_test, delta: float,
                     want_vsd: bool, render_cache: dict, cache_key) -> dict:
    obj = est.obj_id
    mesh, syms, diameter = models.mesh(obj), models.syms(obj), models.diameter(obj)
    pts = mesh.vertices
    sym = is_symmetric(models.info[obj])
    errs = {"vsd": {}, "mssd": {}, "mspd": {}, "adds": {}}
    depth_est = None
    h, w = (depth_test.shape if depth_test is not None else (0, 0))
    for gt_id, g in enumerate(gts):
        if g["obj_id"] != obj:
            continue
        R_g, t_g = g["R"], g["t"]
        near = spheres_overlap(est.t, t_g, diameter)
        gt_sym = _gt_sym_points(pts, R_g, t_g, syms)
        errs["mssd"][gt_id] = [mssd(est.R, est.t, R_g, t_g, pts, syms, gt_sym) / diameter if near else np.inf]
        errs["mspd"][gt_id] = [mspd(est.R, est.t, R_g, t_g, K, pts, syms, gt_sym) * MSPD_REFERENCE_WIDTH / width]
        d = (adi if sym else add)(est.R, est.t, R_g, t_g, pts) / diameter if near else np.inf
        errs["adds"][gt_id] = [d]
        if want_vsd:
            if not sphere_projections_overlap(0.5 * diameter, est.t, t_g):
                errs["vsd"][gt_id] = [1.0] * len(VSD_TAUS)
                continue
            if depth_est is None:
                depth_est = raster.render_depth(pts, mesh.faces, K, w, h, est.R, est.t)
            gkey = (*cache_key, gt_id)
            if gkey not in render_cache:
                render_cache[gkey] = raster.render_depth(pts, mesh.faces, K, w, h, R_g, t_g)
            errs["vsd"][gt_id] = vsd(depth_est, render_cache[gkey], depth_test, K, delta, VSD_TAUS, diameter)
    return errs


def evaluate(root: Path, estimates: list[bop.Estimate], split: str = "test", targets_name: str = bop.TARGETS_FILE,
             vsd_delta: float = VSD_DELTA, with_vsd: bool = True, progress: bool = False) -> dict:
    """Scores in percent: AR_VSD, AR_MSSD, AR_MSPD, AR, ADDS (the ADD(S)-0.1d recall), plus counts."""
    root = Path(root)
    models = Models(root)
    targets: dict = {}
    for t in bop.load_targets(root, targets_name):
        targets.setdefault(t["scene_id"], {}).setdefault(t["im_id"], {})[t["obj_id"]] = t
    by_key: dict = {}
    for e in estimates:
        by_key.setdefault((e.scene_id, e.im_id, e.obj_id), []).append(e)
    n_valid = 0
    tp = {("vsd", ti, th): 0 for ti in range(len(VSD_TAUS)) for th in VSD_THRESHOLDS}
    tp.update({("mssd", th): 0 for th in MSSD_THRESHOLDS})
    tp.update({("mspd", th): 0 for th in MSPD_THRESHOLDS})
    tp["adds"] = 0
    n_evaluated = 0
    items = [(s, i) for s in sorted(targets) for i in sorted(targets[s])]
    if progress:
        from tqdm import tqdm

        items = tqdm(items, desc="bop scoring", unit="image")
    scene_cache: dict = {}
    for scene_id, im_id in items:
        if scene_id not in scene_cache:
            sdir = bop.scene_dir(root, split, scene_id)
            scene_cache.clear()
            scene_cache[scene_id] = (bop.load_scene_gt(sdir / "scene_gt.json"),
                                     bop.load_json(sdir / "scene_gt_info.json"),
                                     bop.load_scene_camera(sdir / "scene_camera.json"))
        scene_gt, scene_info, scene_cam = scene_cache[scene_id]
        if im_id not in scene_gt:
            raise UserFacingError(f"target image {im_id} of scene {scene_id} is not in its scene_gt.json")
        gts, infos, cam = scene_gt[im_id], scene_info[im_id], scene_cam[im_id]
        im_targets = targets[scene_id][im_id]
        valid = valid_gt(gts, infos, im_targets)
        n_valid += sum(valid)
        width = bop.image_width(root, split, scene_id, im_id)
        depth_test = None
        if with_vsd:
            depth_test = bop.load_depth(bop.depth_path(root, split, scene_id, im_id)) * cam["depth_scale"]
        render_cache: dict = {}
        for obj_id, target in im_targets.items():
            group = sorted(by_key.get((scene_id, im_id, obj_id), []), key=lambda e: e.score, reverse=True)
            group = group[:target["inst_count"]]
            n_evaluated += len(group)
            ests = [{"score": e.score, "errors": _estimate_errors(e, gts, models, cam["K"], width, depth_test,
                                                                   vsd_delta, with_vsd, render_cache,
                                                                   (scene_id, im_id))} for e in group]
            if not ests:
                continue
            for ti in range(len(VSD_TAUS) if with_vsd else 0):
                for th in VSD_THRESHOLDS:
                    tp["vsd", ti, th] += len(match(ests, [th], valid, "vsd", ti))
            for th in MSSD_THRESHOLDS:
                tp["mssd", th] += len(match(ests, [th], valid, "mssd"))
            for th in MSPD_THRESHOLDS:
                tp["mspd", th] += len(match(ests, [th], valid, "mspd"))
            tp["adds"] += len(match(ests, [ADD_THRESHOLD], valid, "adds"))

    def recall(n: int) -> float:
        return n / n_valid if n_valid > 0 else 0.0

    ar = {
        "AR_VSD": float(np.mean([recall(v) for k, v in tp.items() if k[0] == "vsd"])) if with_vsd else None,
        "AR_MSSD": float(np.mean([recall(v) for k, v in tp.items() if k[0] == "mssd"])),
        "AR_MSPD": float(np.mean([recall(v) for k, v in tp.items() if k[0] == "mspd"])),
    }
    out = {k: (round(100.0 * v, 4) if v is not None else None) for k, v in ar.items()}
    out["AR"] = round(100.0 * float(np.mean(list(ar.values()))), 4) if with_vsd else None
    out["ADDS"] = round(100.0 * recall(tp["adds"]), 4)
    out.update(n_targets=n_valid, n_estimates=len(estimates), n_evaluated=n_evaluated)
    return out


def main(args) -> dict:
    """`declip score bop --dataset DIR --pred RESULTS.csv`: prints the scores as JSON."""
    estimates = bop.read_results(Path(args.pred))
    out = evaluate(Path(args.dataset), estimates, split=args.split, targets_name=args.targets,
                   vsd_delta=args.vsd_delta, progress=True)
    print(json.dumps(out, indent=1))
    return out
