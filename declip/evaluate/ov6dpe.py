"""Open-vocabulary 6D pose estimation, feature protocol (protocols.md section 7; Oryon's benchmark).

For each anchor/query pair (the same object in two RGB-D scenes, a prompt naming it):
1. dense features of both images: the DenseCLIP content map of the letterboxed image, read bilinearly at
   each pixel centre's letterbox position (the map upsampled to the image), L2-normalised per pixel;
2. the object mask in both images: `oracle` = the GT visible mask (BOP mask_visib), or `text` = pixels whose
   cosine similarity to the prompt's text embedding, min-max normalised over the image, exceeds
   `text_threshold` (our choice; Oryon predicts masks with its own trained decoder);
3. mutual nearest neighbours between the masked pixels with valid depth (at most `max_points` per image,
   a seeded subset), lifted to camera-frame points with depth and intrinsics (mm);
4. seeded RANSAC over 3-point Kabsch fits, refit on the inliers -> T_rel (anchor camera -> query camera);
5. query pose = T_rel * anchor GT pose, written as a BOP19 results CSV (score = inlier fraction) and scored
   by `declip.metrics.bop` on the dataset's targets (the pairs' query views).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from declip.config import dataset_spec, resolve_path
from declip.data import bop
from declip.errors import UserFacingError
from declip.evaluate import registration
from declip.metrics import bop as metric

log = logging.getLogger(__name__)
MASKS = ("oracle", "text")
HEADLINE = ("AR", "AR_VSD", "AR_MSSD", "AR_MSPD", "ADDS")
VIEW_CACHE = 64


def load_pairs(root: Path, name: str) -> list[dict]:
    pairs = bop.load_json(Path(root) / name, int_keys=False)
    if not pairs:
        raise UserFacingError(f"{Path(root) / name} lists no pairs")
    return pairs


class View:
    """One RGB-D image of a BOP scene with its camera and GT, loaded lazily."""

    def __init__(self, root: Path, split: str, scene_id: int, im_id: int, scene_cache: dict):
        self.root, self.split, self.scene_id, self.im_id = root, split, scene_id, im_id
        sdir = bop.scene_dir(root, split, scene_id)
        if scene_id not in scene_cache:
            scene_cache[scene_id] = (bop.load_scene_gt(sdir / "scene_gt.json"), bop.load_scene_camera(sdir / "scene_camera.json"))
        gts, cams = scene_cache[scene_id]
        self.gt, cam = gts[im_id], cams[im_id]
        self.K = cam["K"]
        self.depth = bop.load_depth(bop.depth_path(root, split, scene_id, im_id)) * cam["depth_scale"]  # mm
        self.dir = sdir

    def rgb(self):
        from declip.data.images import load_image

        for ext in (".png", ".jpg"):
            p = self.dir / "rgb" / f"{self.im_id:06d}{ext}"
            if p.is_file():
                return load_image(p)
        raise UserFacingError(f"no rgb/{self.im_id:06d}.png or .jpg in {self.dir}")

    def instance(self, obj_id: int) -> int:
        ids = [k for k, g in enumerate(self.gt) if g["obj_id"] == obj_id]
        if not ids:
            raise UserFacingError(f"object {obj_id} is not in scene {self.scene_id} image {self.im_id}")
        return ids[0]

    def visible_mask(self, obj_id: int) -> np.ndarray:
        from PIL import Image

        p = self.dir / "mask_visib" / f"{self.im_id:06d}_{self.instance(obj_id):06d}.png"
        if not p.is_file():
            raise UserFacingError(f"oracle mask {p} does not exist")
        with Image.open(p) as im:
            return np.asarray(im) > 0


class DenseMap:
    """The content map of one letterboxed image, read at image pixels: bilinear interpolation of the
    tokens at each pixel centre's letterbox position (the map upsampled to the image), L2-normalised.
    Only the low-resolution map is kept, so full-size images do not hold a (C, H, W) array."""

    CHUNK = 65536

    def __init__(self, tokens, image_shape: tuple[int, int], letterbox_shape: tuple[int, int], size: int):
        self.tokens = tokens  # (1, C, h, w) float tensor
        self.shape = image_shape
        self.lb = letterbox_shape  # (nh, nw): the image part of the letterbox
        self.size = size

    def sample(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """(N, C) features at integer pixels (u, v)."""
        import torch
        import torch.nn.functional as F

        h, w = self.shape
        out = []
        for i in range(0, len(u), self.CHUNK):
            x = (np.asarray(u[i:i + self.CHUNK], float) + 0.5) * self.lb[1] / w / self.size * 2 - 1
            y = (np.asarray(v[i:i + self.CHUNK], float) + 0.5) * self.lb[0] / h / self.size * 2 - 1
            grid = torch.from_numpy(np.stack([x, y], -1)).float().view(1, 1, -1, 2)
            f = F.grid_sample(self.tokens, grid, mode="bilinear", padding_mode="border", align_corners=False)
            out.append(F.normalize(f[0, :, 0].T, dim=1).numpy())
        return np.concatenate(out) if out else np.zeros((0, self.tokens.shape[1]), np.float32)

    def similarity(self, emb: np.ndarray) -> np.ndarray:
        """(H, W) cosine similarity of every pixel's feature with a unit text embedding."""
        h, w = self.shape
        v, u = np.divmod(np.arange(h * w), w)
        return (self.sample(u, v) @ (emb / np.linalg.norm(emb))).reshape(h, w)


def dense_map(model, image, student: dict) -> DenseMap:
    from declip.data.images import letterbox, normalize

    import torch

    h, w = image.shape[-2:]
    size = student["image_size"]
    with torch.no_grad():
        x, scale = letterbox(image, size)
        x = normalize(x[None].to(model.device), student["mean"], student["std"])
        tokens = model.dense(x).content.float().cpu()
    return DenseMap(tokens, (h, w), (max(1, round(h * scale)), max(1, round(w * scale))), size)


def text_mask(sim: np.ndarray, threshold: float) -> np.ndarray:
    """Pixels whose similarity to the prompt, min-max normalised over the image, exceeds `threshold`."""
    lo, hi = sim.min(), sim.max()
    norm = (sim - lo) / (hi - lo) if hi > lo else np.zeros_like(sim)
    return norm > threshold


def masked_points(feats, mask: np.ndarray, depth: np.ndarray, K, max_points: int, rng):
    """Features (N, C) and lifted points (N, 3) of masked pixels with valid depth (a seeded subset);
    `feats` is a DenseMap (anything with `sample(u, v)`)."""
    v, u = np.nonzero(mask & (depth > 0))
    if len(u) > max_points:
        keep = np.sort(rng.choice(len(u), max_points, replace=False))
        u, v = u[keep], v[keep]
    return feats.sample(u, v), registration.lift(u.astype(float), v.astype(float), depth[v, u], K)


def estimate_pair(fa, fb, ma, mb, va: View, vb: View, obj_id: int, ocfg: dict, seed: int):
    """Query pose (R, t mm) and score, or None when fewer than 3 mutual matches exist."""
    rng = np.random.default_rng(seed)
    feat_a, pts_a = masked_points(fa, ma, va.depth, va.K, ocfg["max_points"], rng)
    feat_b, pts_b = masked_points(fb, mb, vb.depth, vb.K, ocfg["max_points"], rng)
    ia, ib = registration.mutual_nn(feat_a, feat_b)
    fit = registration.ransac(pts_a[ia], pts_b[ib], ocfg["ransac_threshold_mm"], ocfg["ransac_iterations"], seed)
    if fit is None:
        return None, len(ia)
    g = va.gt[va.instance(obj_id)]
    R = fit.R @ g["R"]
    t = fit.R @ g["t"].ravel() + fit.t
    return (R, t, float(fit.inliers.mean())), len(ia)


def main(args, cfg) -> dict:
    """`declip evaluate ov6dpe --variant V --checkpoint CKPT --data ROOT --mask M --out metrics.json`."""
    from tqdm import tqdm

    from declip.device import pick_device
    from declip.evaluate import write_metrics
    from declip.evaluate.text import family_dense_mode, load_eval_model

    t0 = time.time()
    ocfg, student = cfg["evaluate"]["ov6dpe"], cfg["student"]
    if args.mask not in MASKS:
        raise UserFacingError(f"--mask {args.mask!r} is not allowed; use one of {', '.join(MASKS)}")
    spec = dataset_spec(cfg, args.dataset or ocfg["dataset"], args.data)
    root = resolve_path(spec["root"])
    split = spec.get("split", "test")
    pairs = load_pairs(root, ocfg["pairs"])
    model = load_eval_model(cfg, args.variant, args.checkpoint, pick_device(args.device),
                            family_dense_mode(cfg, "ov6dpe"))
    scenes: dict = {}
    cache: dict = {}  # (scene, image) -> (View, DenseMap), bounded: pairs reuse views, full-size depth is large

    def view(ref):
        key = (int(ref["scene_id"]), int(ref["im_id"]))
        if key not in cache:
            if len(cache) >= VIEW_CACHE:
                cache.pop(next(iter(cache)))
            v = View(root, split, *key, scenes)
            cache[key] = (v, dense_map(model, v.rgb(), student))
        return cache[key]

    estimates, n_matches, mask_ious = [], [], []
    for pair in tqdm(pairs, desc=f"ov6dpe {args.mask} {args.variant}", unit="pair"):
        tp = time.time()
        obj = int(pair["obj_id"])
        va, fa = view(pair["anchor"])
        vb, fb = view(pair["query"])
        if args.mask == "oracle":
            ma, mb = va.visible_mask(obj), vb.visible_mask(obj)
        else:
            emb, _ = model.text([pair["prompt"]], ("{}",))
            emb = emb.float().cpu().numpy()[0]
            ma = text_mask(fa.similarity(emb), ocfg["text_threshold"])
            mb = text_mask(fb.similarity(emb), ocfg["text_threshold"])
            gt_b = vb.visible_mask(obj)
            mask_ious.append(float((mb & gt_b).sum() / max(1, (mb | gt_b).sum())))
        est, n = estimate_pair(fa, fb, ma, mb, va, vb, obj, ocfg, ocfg["seed"] + int(pair["pair"]))
        n_matches.append(n)
        if est is not None:
            R, t, score = est
            estimates.append(bop.Estimate(vb.scene_id, vb.im_id, obj, score, R, t.reshape(3, 1), time.time() - tp))
    out_path = Path(args.out)
    # BOP result names are METHOD_DATASET-SPLIT.csv, METHOD without underscores
    method = f"{args.variant}-{args.mask}".replace("_", "-")
    csv = out_path.parent / f"{method}_{spec.get('bop_name', 'dataset')}-{split}.csv"
    bop.write_results(csv, estimates)
    # score from the written BOP19 file, so the format itself is what is evaluated
    scores = metric.evaluate(root, bop.read_results(csv), split=split, vsd_delta=ocfg["vsd_delta"])
    result = {k: scores[k] for k in HEADLINE}
    result.update(mask=args.mask, variant=args.variant, n_pairs=len(pairs), n_estimates=len(estimates),
                  n_targets=scores["n_targets"], mean_matches=round(float(np.mean(n_matches)), 2),
                  text_mask_iou=round(float(np.mean(mask_ious)) * 100, 4) if mask_ious else None,
                  results_csv=csv.name, seconds=round(time.time() - t0, 2))
    write_metrics(out_path, result)
    log.info("ov6dpe %s/%s: AR %s (VSD %s, MSSD %s, MSPD %s), ADD(S) %s on %d pairs, %.1fs", args.variant, args.mask,
             result["AR"], result["AR_VSD"], result["AR_MSSD"], result["AR_MSPD"], result["ADDS"], len(pairs),
             result["seconds"])
    return {"artifacts": [str(out_path), str(csv)]}
