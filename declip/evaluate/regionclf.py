"""Region classification on COCO-panoptic segments (protocols.md section 1, the CLIPSelf protocol).

Per image: one letterboxed forward of the dense model and one batched forward of all the segment crops.
Per segment (skipped when its box has w*h < min_segment_size^2):
  things: RoI = GT box, crop = GT box enlarged by thing_crop_scale about its centre (clipped to the image);
  stuff:  RoI = crop = tight box of the mask.
Classifiers, cosine against the 63-template class embeddings (CLIPSelf):
  rois     RoIAlign 1x1 (aligned, adaptive sampling) of the dense map on the RoI;
  maskpool mean of the dense tokens inside the GT mask resized to the token grid (`maskpool`: authors =
           bicubic resize, tokens > 0, equal weights; coverage = our former rule);
  crops    CLS embedding (normal forward) of the crop cut from the original image, resized as the authors'
           ResizeMaxSize (declip.data.crops) to student.crop_size.
rois and maskpool pool L2-normalised tokens when method.token_norm_before_pool resolves to true.
Metric: mean over the classes present of the per-class accuracy, top-1 and top-5, for things and stuff
separately (CLIPSelf `macc_with_is_thing`), against all K classes; in percent.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from declip.config import dataset_spec
from declip.errors import UserFacingError

log = logging.getLogger(__name__)

CLASSIFIERS = ("rois", "maskpool", "crops")
MASKPOOLS = ("authors", "coverage")
# `coverage` rule (our choice): a token counts as inside a mask when the mask covers at least this fraction
# of it; segments covering no token that much fall back to the coverage-weighted mean.
MASK_COVERAGE = 0.5


@dataclass
class ImageSegments:
    labels: list[int]  # contiguous class index 0..K-1
    isthing: list[bool]
    rois: list[tuple[float, float, float, float]]  # x1, y1, x2, y2 in image pixels
    crops: list[tuple[float, float, float, float]]
    masks: object  # (N, H, W) bool array


def image_segments(segments, seg_ids, label_of: dict[int, int], min_size: int, thing_scale: float) -> ImageSegments:
    """The evaluated segments of one image with their RoI and crop boxes (CLIPSelf COCOPanopticDataset)."""
    import numpy as np

    img_h, img_w = seg_ids.shape
    out = ImageSegments([], [], [], [], np.zeros((0, img_h, img_w), bool))
    masks = []
    for seg in segments:
        mask = seg_ids == seg.id
        if seg.isthing:
            x, y, w, h = seg.bbox
            cx, cy = x + w / 2, y + h / 2
            half_w, half_h = w * thing_scale / 2, h * thing_scale / 2
            roi = (x, y, x + w, y + h)
            crop = (max(cx - half_w, 0.0), max(cy - half_h, 0.0), min(cx + half_w, img_w), min(cy + half_h, img_h))
        else:
            ys, xs = np.nonzero(mask)
            if len(xs) == 0:
                continue
            # Pixel-edge coordinates: a mask spanning columns a..b covers [a, b+1).
            roi = crop = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
            w, h = roi[2] - roi[0], roi[3] - roi[1]
        if w * h < min_size**2 or not mask.any():
            continue
        out.labels.append(label_of[seg.category_id])
        out.isthing.append(seg.isthing)
        out.rois.append(roi)
        out.crops.append(crop)
        masks.append(mask)
    if masks:
        out.masks = np.stack(masks)
    return out


def mask_coverage(masks, image_size: int, grid: tuple[int, int]):
    """(N, gh, gw): the fraction of each token cell that a mask covers, the masks (N, H, W) letterboxed
    like their image (area resize to the token grid). Shared with declip.evaluate.ov3d.mask_pool."""
    import torch.nn.functional as F

    from declip.data.images import letterbox

    boxed, _ = letterbox(masks[:, None].float(), image_size)
    return F.interpolate(boxed, size=tuple(grid), mode="area")[:, 0]


def authors_mask_weights(masks, grid: int):
    """(N, grid*grid) pooling weights of the authors' mask pooling: each mask (N, H, W) goes through
    `ResizeLongest(grid)` - long side to the token grid, round(side * scale), bicubic, align_corners False,
    no antialias (`antialias=None`, which torchvision < 0.17 reads as False for tensors), zero padding
    right/bottom - and tokens with a value > 0 are kept (DeCLIP/CLIPSelf training/data.py
    COCOPanopticDataset l.350 and l.411-412); `mask_pool` averages them with equal weights and no
    fallback (transformer.py l.548-554: sum / (count + 1e-12))."""
    import torch.nn.functional as F

    h, w = masks.shape[-2:]
    scale = grid / max(h, w)
    nh, nw = round(h * scale), round(w * scale)
    small = F.interpolate(masks[:, None].float(), size=(nh, nw), mode="bicubic", align_corners=False)
    keep = F.pad(small, (0, grid - nw, 0, grid - nh))[:, 0].flatten(1) > 0.0
    keep = keep.float()
    return keep / (keep.sum(1, keepdim=True) + 1e-12)


def mask_token_weights(masks, scale_size: int, grid: int, rule: str = "authors"):
    """(N, grid*grid) pooling weights: `authors_mask_weights`, or (`coverage`) the masks letterboxed like
    the image and the share of each token they cover."""
    import torch

    if rule == "authors":
        return authors_mask_weights(masks, grid)
    coverage = mask_coverage(masks, scale_size, (grid, grid)).flatten(1)
    inside = (coverage >= MASK_COVERAGE).float()
    empty = inside.sum(1) == 0
    weights = torch.where(empty[:, None], coverage, inside)
    return weights / weights.sum(1, keepdim=True).clamp_min(1e-12)


def classify_image(model, img01, segs: ImageSegments, classifiers, image_size: int, crop_size: int, mean, std,
                   maskpool: str = "authors"):
    """{classifier: (N, C) L2-normalised region embeddings} for all segments of one image, batched."""
    import torch
    import torch.nn.functional as F

    from declip.data.images import letterbox, normalize
    from declip.distill.losses import crop_targets, region_features
    from declip.distill.regions import to_rois

    dev = model.device
    feats = {}
    boxed, scale = letterbox(img01, image_size)
    need_dense = any(c in classifiers for c in ("rois", "maskpool"))
    with torch.no_grad():
        if need_dense:
            content = model.dense(normalize(boxed, mean, std)[None].to(dev)).pool_map().float()  # (1, C, h, w)
        if "rois" in classifiers:
            rois = to_rois([torch.tensor(segs.rois, dtype=torch.float32, device=dev) * scale])
            feats["rois"] = region_features(content, rois, image_size)
        if "maskpool" in classifiers:
            weights = mask_token_weights(torch.from_numpy(segs.masks).to(dev), image_size, content.shape[-1], maskpool)
            tokens = content[0].flatten(1).T  # (h*w, C)
            feats["maskpool"] = F.normalize(weights @ tokens, dim=-1)
        if "crops" in classifiers:
            feats["crops"] = crop_targets(model.dense, [img01], [torch.tensor(segs.crops, dtype=torch.float64)],
                                          crop_size, mean, std)
    return feats


def topk_correct(feats, text, owner, num_classes: int, labels):
    """(N, 2) bool: label is the top-1 / among the top-5 of cosine scores, synonyms max-pooled."""
    import torch

    from declip.evaluate.text import max_over_synonyms

    scores = max_over_synonyms(feats @ text.T, owner, num_classes)
    top = scores.topk(min(5, num_classes), dim=1).indices
    hit = top == labels[:, None]
    return torch.stack([hit[:, 0], hit.any(1)], 1)


def mean_class_accuracy(correct, labels) -> float:
    """Mean over the classes present of the per-class accuracy, percent (CLIPSelf macc)."""
    import numpy as np

    if len(labels) == 0:
        return math.nan
    accs = [correct[labels == c].mean() for c in np.unique(labels)]
    return float(np.mean(accs)) * 100


def summarise(correct: dict, labels, isthing, num_classes: int) -> dict:
    """metrics.json payload (docs/interfaces.md): per classifier thing/stuff top-1/top-5, chance, counts."""
    import numpy as np

    out = {}
    for clf, corr in correct.items():
        out[clf] = {}
        for kind, sel in (("thing", isthing), ("stuff", ~isthing)):
            for j, k in ((0, "top1"), (1, "top5")):
                out[clf][f"{kind}_{k}"] = _finite(mean_class_accuracy(corr[sel, j].astype(np.float64), labels[sel]))
    # A uniform guess among the K candidate classes is right with probability k/K per segment.
    chance1, chance5 = 100.0 / num_classes, min(100.0, 500.0 / num_classes)
    out["chance"] = {"thing_top1": chance1, "thing_top5": chance5, "stuff_top1": chance1, "stuff_top5": chance5}
    out["n_segments"] = {"thing": int(isthing.sum()), "stuff": int((~isthing).sum())}
    return out


def _finite(v: float):
    return None if math.isnan(v) else v


def evaluate(model, dataset, settings: dict, student_cfg: dict, classifiers=CLASSIFIERS, progress=True) -> dict:
    """Run the protocol over a PanopticDataset with a loaded EvalModel; returns the metrics.json payload."""
    import numpy as np
    import torch
    from tqdm import tqdm

    from declip.data.images import load_image
    from declip.data.panoptic import load_segment_ids

    num_classes = len(dataset.categories)
    text, owner = model.text(dataset.names, "vild")
    label_of = dataset.label_of
    correct = {c: [] for c in classifiers}
    labels, isthing = [], []
    start = time.time()
    for im in tqdm(dataset.images, desc="regionclf", disable=not progress):
        segs = image_segments(im.segments, load_segment_ids(im.png_path), label_of,
                              settings["min_segment_size"], settings["thing_crop_scale"])
        if not segs.labels:
            continue
        img01 = load_image(im.image_path)
        if img01.shape[-2:] != segs.masks.shape[-2:]:
            raise UserFacingError(f"image {im.image_path} and its panoptic PNG {im.png_path} differ in size")
        feats = classify_image(model, img01, segs, classifiers, settings["image_size"], student_cfg["crop_size"],
                               student_cfg["mean"], student_cfg["std"], settings.get("maskpool", "authors"))
        lab = torch.tensor(segs.labels, device=model.device)
        for c in classifiers:
            correct[c].append(topk_correct(feats[c], text, owner, num_classes, lab).cpu().numpy())
        labels.extend(segs.labels)
        isthing.extend(segs.isthing)
    if not labels:
        raise UserFacingError("no segment passed the size filter: check `evaluate.regionclf.min_segment_size`")
    seconds = time.time() - start
    log.info("regionclf: %d images, %d segments in %.1f s (%.1f images/s)", len(dataset.images), len(labels),
             seconds, len(dataset.images) / max(seconds, 1e-9))
    correct = {c: np.concatenate(v) for c, v in correct.items()}
    return summarise(correct, np.asarray(labels), np.asarray(isthing, bool), num_classes)


def main(args, cfg: dict) -> dict:
    """`declip evaluate regionclf`: metrics.json for one variant on the configured panoptic dataset."""
    from declip.data.panoptic import panoptic_paths, read_panoptic
    from declip.device import pick_device
    from declip.evaluate import write_metrics
    from declip.evaluate.text import eval_options, family_attn_scale, family_dense_mode, load_eval_model

    settings = cfg["evaluate"]["regionclf"]
    spec = dataset_spec(cfg, args.dataset or settings["dataset"], args.data)
    dataset = read_panoptic(*panoptic_paths(spec))
    model = load_eval_model(cfg, args.variant, args.checkpoint, pick_device(args.device),
                            family_dense_mode(cfg, "regionclf"),
                            family_attn_scale(cfg, "regionclf"))
    classifiers = tuple(settings.get("classifiers", CLASSIFIERS))
    metrics = evaluate(model, dataset, settings, cfg["student"], classifiers)
    metrics["options"] = eval_options(cfg, args.variant, model, maskpool=settings.get("maskpool", "authors"))
    out = write_metrics(args.out, metrics)
    return {"artifacts": [str(out)]}  # metrics.json is a rule output: the tracking layer logs its numbers
