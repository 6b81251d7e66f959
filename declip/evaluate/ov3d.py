"""Open-vocabulary 3D instance segmentation, feature protocol (protocols.md section 5; journal Table 2).

Given class-agnostic 3D masks (the hosts' released proposals at full scale; GT-derived ones in the mini
world), each mask gets a CLIP feature from the posed RGB-D frames and the label of the nearest ScanNet200
class text ("a {} in a scene", OpenMask3D), with confidence 1.0 (OpenMask3D, and Open3DIS's open-vocabulary
evaluation). Per mask (OpenMask3D features_extractor.py): every `frame_stride`-th frame, depth-tested
visible points (pixel coordinates truncated, `pixel_rounding`), top-k views by distinct projected
pixels (`view_ranking`), a 2D mask per view from the projected visible points
(dilated; SAM refinement is not run), then
- `crops`: `crop_levels` multi-level crops of the 2D mask's box (expansion `crop_expansion` per level),
  through CLIP's transform (short side to `student.crop_size`, centre crop; `crop_preprocess`), encoded by
  the image tower (CLS), mean over views and levels;
- `dense`: the frame's dense map (DenseCLIP content, tokens L2-normalised) averaged inside the 2D mask
  resized to the token grid (area weights), mean over views: the path that exercises DeCLIP's features.
Hosts differ only in their proposals: `openmask3d` reads `<scene>_masks.pt` (Mask3D class-agnostic masks),
`open3dis` reads `<scene>.pth` (3D proposals + 2D-lifted proposals; in the mini world the 2D-lifted part is
approximated by each object's vertices seen in some frame, kept when not a near-duplicate). Open3DIS's own
per-point feature fusion and its 2D proposal network are NOT reproduced; both hosts use the same
classification here.

Predictions are written in the ScanNet benchmark format next to metrics.json and scored from the files
with `declip.metrics.scannet200`; "random_labels" scores the same masks with labels drawn uniformly among
the 200 classes (mean over `random_label_seeds`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from declip.config import dataset_spec, resolve_path
from declip.data import scannet
from declip.data.scannet200 import CLASS_IDS, CLASS_NAMES
from declip.errors import UserFacingError
from declip.evaluate import projection
from declip.metrics import scannet200 as metric

log = logging.getLogger(__name__)
MODES = ("crops", "dense")
HEADLINE = ("AP", "AP50", "AP25", "AP_head", "AP_common", "AP_tail")
ENCODE_BATCH = 64


def class_text_features(model, prompt: str):
    """(200, C) L2-normalised text embeddings of the single OpenMask3D prompt per ScanNet200 class
    (a one-template ensemble is exactly the normalised prompt embedding), cached like every text set."""
    emb, _ = model.text(list(CLASS_NAMES), (prompt,))
    return emb.float()


def scene_visibility(scene: scannet.ScanNetScene, frame_ids: list[int], tolerance: float, rounding: str = "round"):
    """Per sampled frame: visible (F, N) bool and integer pixel coordinates u, v (F, N)."""
    points = scene.points
    vis, us, vs, shape = [], [], [], None
    for i in frame_ids:
        depth = scene.depth(i)
        shape = depth.shape
        visible, u, v = projection.visible_points(points, scene.pose(i), scene.K_depth, depth, tolerance,
                                                     rounding)
        vis.append(visible)
        us.append(u.astype(np.int32))
        vs.append(v.astype(np.int32))
    return np.stack(vis), np.stack(us), np.stack(vs), shape


def _image_tensor(scene, frame_id: int, shape):
    import torch

    rgb = scene.color(frame_id, size=shape)
    return torch.from_numpy(rgb.astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()


def _encode_crops(model, crops: list, student: dict, preprocess: str = "clip"):
    """(M, C) L2-normalised CLS features of the crops, batched. preprocess `clip`: CLIP's own transform
    (short side, centre crop), as OpenMask3D (`self.clip_preprocess(cropped_img)`); `letterbox`: long side
    and zero padding (our choice, keeps the whole crop)."""
    import torch

    from declip.data.crops import clip_center_crop
    from declip.data.images import letterbox, normalize

    def prep(c):
        return clip_center_crop(c, student["crop_size"]) if preprocess == "clip" else letterbox(c, student["crop_size"])[0]

    out = []
    with torch.no_grad():
        for i in range(0, len(crops), ENCODE_BATCH):
            batch = torch.stack([prep(c) for c in crops[i:i + ENCODE_BATCH]])
            batch = normalize(batch.to(model.device), student["mean"], student["std"])
            out.append(model.dense.encode_image(batch).float().cpu())
    return torch.cat(out)


def _dense_maps(model, images: dict, student: dict) -> dict:
    """frame id -> (C, h, w) dense map with L2-normalised tokens, of the letterboxed frame."""
    import torch
    import torch.nn.functional as F

    from declip.data.images import letterbox, normalize

    ids = sorted(images)
    maps = {}
    with torch.no_grad():
        for i in range(0, len(ids), ENCODE_BATCH):
            chunk = ids[i:i + ENCODE_BATCH]
            batch = torch.stack([letterbox(images[f], student["image_size"])[0] for f in chunk])
            batch = normalize(batch.to(model.device), student["mean"], student["std"])
            content = F.normalize(model.dense(batch).content.float(), dim=1).cpu()
            maps.update(zip(chunk, content))
    return maps


def mask_pool(dense_map, mask2d: np.ndarray, image_size: int):
    """Mean of the dense tokens inside a 2D mask: the mask goes through the frame's letterbox, then each
    token's weight is the fraction of its cell the mask covers (area resize to the token grid)."""
    import torch

    from declip.evaluate.regionclf import mask_coverage

    weights = mask_coverage(torch.from_numpy(mask2d)[None], image_size, dense_map.shape[-2:])[0]
    total = weights.sum()
    if total <= 0:
        return None
    return (dense_map * weights).sum(dim=(1, 2)) / total


def mask_features(scene, masks: np.ndarray, model, ocfg: dict, student: dict, mode: str):
    """(K, C) feature per 3D mask (zeros where no frame sees it, as OpenMask3D leaves them)."""
    import torch
    import torch.nn.functional as F

    frame_ids = scene.frame_ids[::ocfg["frame_stride"]]
    if not frame_ids:
        raise UserFacingError(f"scene {scene.name} has no usable frames (depth/ and pose/ with finite poses)")
    vis, us, vs, shape = scene_visibility(scene, frame_ids, ocfg["depth_tolerance"], ocfg.get("pixel_rounding", "truncate"))
    if ocfg.get("view_ranking", "pixels") == "pixels":
        counts = projection.view_pixel_counts(vis, us, vs, masks, shape[1])
    else:
        counts = projection.view_counts(vis, masks)
    views = projection.top_views(counts, ocfg["topk_views"])
    needed = sorted({int(f) for v in views for f in v})
    images = {f: _image_tensor(scene, frame_ids[f], shape) for f in needed}
    feats = torch.zeros(len(masks), int(model.dense.embed_dim))
    mask2d = {}
    for j, vlist in enumerate(views):
        for f in vlist:
            sel = masks[j] & vis[f]
            mask2d[j, int(f)] = projection.points_mask(us[f, sel], vs[f, sel], shape, ocfg["mask_dilation"])
    if mode == "crops":
        crops, owner = [], []
        for (j, f), m in mask2d.items():
            for x1, y1, x2, y2 in projection.multilevel_boxes(m, ocfg["crop_levels"], ocfg["crop_expansion"]):
                crops.append(images[f][:, y1:y2, x1:x2])
                owner.append(j)
        if crops:
            enc = _encode_crops(model, crops, student, ocfg.get("crop_preprocess", "clip"))
            owner_t = torch.as_tensor(owner)
            feats.index_add_(0, owner_t, enc)
            feats /= torch.bincount(owner_t, minlength=len(masks)).clamp(min=1)[:, None].float()
    elif mode == "dense":
        maps = _dense_maps(model, images, student)
        sums, n = torch.zeros_like(feats), torch.zeros(len(masks))
        for (j, f), m in mask2d.items():
            pooled = mask_pool(maps[f], m, student["image_size"])
            if pooled is not None:
                sums[j] += F.normalize(pooled, dim=0)
                n[j] += 1
        feats = sums / n.clamp(min=1)[:, None]
    else:
        raise UserFacingError(f"--mode {mode!r} is not allowed; use one of {', '.join(MODES)}")
    return feats


def classify(feats, text) -> np.ndarray:
    """Index into the 200 classes of the most similar text (cosine); zero features give index 0 like
    OpenMask3D's argmax over all-equal scores."""
    import torch.nn.functional as F

    return (F.normalize(feats, dim=-1) @ text.cpu().T).argmax(1).numpy()


def random_label_scores(gts: dict, masks: dict, seeds, min_region_size: int = metric.MIN_REGION_SIZE) -> dict:
    """The same masks with labels uniform over the 200 classes, scored, averaged over seeds (percent)."""
    runs = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        preds = {s: [metric.Prediction(m, CLASS_IDS[int(rng.integers(len(CLASS_IDS)))], 1.0) for m in masks[s]]
                 for s in sorted(masks)}
        runs.append(metric.to_percent(metric.evaluate(gts, preds, min_region_size)))
    out = {}
    for key in HEADLINE:
        vals = [r[key] for r in runs if r[key] is not None]
        out[key] = round(float(np.mean(vals)), 4) if vals else None
    return out


def main(args, cfg) -> dict:
    """`declip evaluate ov3d --variant V --checkpoint CKPT --data ROOT --out metrics.json --host H --mode M`."""
    from tqdm import tqdm

    from declip.device import pick_device
    from declip.evaluate import write_metrics
    from declip.evaluate.text import eval_options, family_attn_scale, family_dense_mode, load_eval_model

    t0 = time.time()
    ocfg, student = cfg["evaluate"]["ov3d"], cfg["student"]
    host, mode = args.host, args.mode
    if host not in scannet.HOSTS:
        raise UserFacingError(f"--host {host!r} is not allowed; use one of {', '.join(scannet.HOSTS)}")
    if mode not in MODES:
        raise UserFacingError(f"--mode {mode!r} is not allowed; use one of {', '.join(MODES)}")
    root = resolve_path(dataset_spec(cfg, ocfg["dataset"], args.data)["root"])
    scenes = scannet.list_scenes(root)
    device = pick_device(args.device)
    model = load_eval_model(cfg, args.variant, args.checkpoint, device, family_dense_mode(cfg, "ov3d"),
                            family_attn_scale(cfg, "ov3d"))
    text = class_text_features(model, ocfg["prompt"])
    out_path = Path(args.out)
    pred_dir = out_path.parent / "predictions"
    gts, masks_by_scene, n_masks = {}, {}, 0
    for name in tqdm(scenes, desc=f"ov3d {host}/{mode}", unit="scene"):
        scene = scannet.load_scene(root, name)
        masks, _conf = scannet.load_proposals(root, ocfg["proposals"], host, name, len(scene.vertices))
        labels = classify(mask_features(scene, masks, model, ocfg, student, mode), text)
        preds = [metric.Prediction(m, CLASS_IDS[int(k)], 1.0) for m, k in zip(masks, labels)]
        metric.write_predictions(pred_dir, name, preds)
        gts[name] = scannet.load_gt(root, name)
        masks_by_scene[name] = masks
        n_masks += len(masks)
    # score from the written benchmark files, so the format itself is what is evaluated
    preds = {s: metric.read_predictions(pred_dir / f"{s}.txt", pred_dir) for s in scenes}
    scores = metric.to_percent(metric.evaluate(gts, preds, ocfg["min_region_size"]))
    result = {k: scores[k] for k in HEADLINE}
    result["random_labels"] = random_label_scores(gts, masks_by_scene, ocfg["random_label_seeds"],
                                                  ocfg["min_region_size"])
    result.update(host=host, mode=mode, variant=args.variant, n_scenes=len(scenes), n_masks=n_masks,
                  seconds=round(time.time() - t0, 2), per_class=scores["per_class"])
    extra = ({k: ocfg[k] for k in ("crop_preprocess", "view_ranking", "pixel_rounding")} if mode == "crops"
             else {"view_ranking": ocfg["view_ranking"], "pixel_rounding": ocfg["pixel_rounding"], "token_norm": True})
    result["options"] = eval_options(cfg, args.variant, model, **extra)
    write_metrics(out_path, result)
    log.info("ov3d %s/%s %s: AP %s (random labels %s) on %d scenes, %d masks, %.1fs", host, mode, args.variant,
             result["AP"], result["random_labels"]["AP"], len(scenes), n_masks, result["seconds"])
    return {"artifacts": [str(out_path)]}  # metrics.json is a rule output: the tracking layer logs its numbers
