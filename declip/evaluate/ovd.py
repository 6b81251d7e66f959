"""Open-vocabulary object detection (protocols.md section 3): F-ViT-style detector training on base classes,
its evaluation, and the training-free box-classification protocol; scored on OV-COCO / OV-LVIS semantics.

Modes of `declip evaluate ovd`:
  detector  the trained detector (`declip detector`) on the evaluation split, F-ViT's score ensembling;
  boxclf    training-free: GT boxes (or a proposal file) -> RoIAlign 1x1 of the dense map -> softmax over
            the classes + background of T * cosine (T = 45 OV-COCO, 90 OV-LVIS) -> the top-k classes of
            each box as detections. Only the frozen backbone is compared, no detector is trained.
Both write the detections (COCO results format) next to metrics.json and score them with
`declip.metrics.ovcoco` (AP50 novel/base/all) or `declip.metrics.lvis_ap` (AP, APr, APc, APf).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

from declip.config import dataset_spec
from declip.errors import UserFacingError

log = logging.getLogger(__name__)
MODES = ("detector", "boxclf")
BACKGROUND = "background"


# ---------------------------------------------------------------- shared pieces

def class_embeddings(model, names: list[str], template_set):
    """(1 + K, C): text embeddings of background then each class (synonyms averaged), L2-normalised."""
    import torch
    import torch.nn.functional as F

    emb, owner = model.text([BACKGROUND] + list(names), template_set)
    owner = torch.as_tensor(owner, device=emb.device)
    out = torch.zeros(len(names) + 1, emb.shape[1], device=emb.device).index_add_(0, owner, emb.float())
    return F.normalize(out, dim=-1)


def novel_mask(names: list[str], novel: tuple[str, ...]):
    import torch

    return torch.tensor([n in novel for n in names], dtype=torch.bool)


def prepare(img01, size: int, student: dict):
    """(normalised letterbox (3, size, size), scale) as every family sees an image."""
    from declip.data.images import letterbox, normalize

    boxed, scale = letterbox(img01, size)
    return normalize(boxed, student["mean"], student["std"]), scale


def to_results(boxes, scores, labels, image_id: int, scale: float, category_ids: list[int]) -> list[dict]:
    """Letterbox x1y1x2y2 boxes -> COCO results entries in original pixels (labels 1..K)."""
    b = (boxes / scale).tolist()
    return [{"image_id": image_id, "category_id": category_ids[int(lab) - 1],
             "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)], "score": round(float(s), 5)}
            for (x1, y1, x2, y2), s, lab in zip(b, scores.tolist(), labels.tolist())]


def score_detections(settings: dict, data, dets: list[dict], base, novel) -> dict:
    if settings["scorer"] == "lvis":
        from declip.metrics.lvis_ap import score_loaded

        return score_loaded(data.gt, dets, settings["max_dets"] or 300)
    from declip.metrics.ovcoco import score_loaded

    return score_loaded(data.gt, dets, settings["max_dets"] or 1000, base, novel)


# ---------------------------------------------------------------- training (declip detector)

def jitter(img01, boxes, size: int, scale_range, flip: bool, gen):
    """F-ViT train pipeline: resize to a random fraction of `size` (keep ratio), random crop / pad to
    size x size, horizontal flip; boxes follow and those left under 0.01 px wide are dropped."""
    import torch
    import torch.nn.functional as F

    h, w = img01.shape[-2:]
    lo, hi = scale_range
    ratio = lo + (hi - lo) * float(torch.rand(1, generator=gen))
    s = size * ratio / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    img = F.interpolate(img01[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)[0]
    y0 = int(torch.randint(max(nh - size, 0) + 1, (1,), generator=gen))
    x0 = int(torch.randint(max(nw - size, 0) + 1, (1,), generator=gen))
    img = img[:, y0:y0 + size, x0:x0 + size]
    img = F.pad(img, (0, size - img.shape[-1], 0, size - img.shape[-2]))
    b = boxes * s - torch.tensor([x0, y0, x0, y0], dtype=boxes.dtype)
    b[:, 0::2] = b[:, 0::2].clamp(0, min(size, nw - x0))
    b[:, 1::2] = b[:, 1::2].clamp(0, min(size, nh - y0))
    if flip:
        img = img.flip(-1)
        b = torch.stack([size - b[:, 2], b[:, 1], size - b[:, 0], b[:, 3]], 1)
    keep = ((b[:, 2] - b[:, 0]) > 0.01) & ((b[:, 3] - b[:, 1]) > 0.01)
    return img, b, keep


def lr_at(step: int, steps_per_epoch: int, d: dict) -> float:
    """mmcv step policy with linear warm-up (F-ViT lr_config): factor of detector.lr."""
    factor = 0.1 ** sum(1 for e in d["lr_steps"] if step >= e * steps_per_epoch)
    if step < d["warmup_iters"]:
        k = (1 - step / d["warmup_iters"]) * (1 - d["warmup_ratio"])
        factor *= 1 - k
    return factor


def train(cfg: dict, variant: str, checkpoint: str | None, out: str | Path, device_arg: str = "auto") -> dict:
    """Train the detector of one variant on the base classes of `evaluate.ovd.train_dataset`."""
    import torch
    from tqdm import tqdm

    from declip.data.detection import drop_categories, read_detection, split_names
    from declip.data.images import load_image, normalize
    from declip.distill.data import step_indices, total_steps
    from declip.distill.trainer import init_distributed
    from declip.evaluate.fvit import FViT
    from declip.evaluate.text import family_dense_mode, load_eval_model

    settings, d = cfg["evaluate"]["ovd"], cfg["evaluate"]["ovd"]["detector"]
    dist_env, device = init_distributed(device_arg)
    data = read_detection(dataset_spec(cfg, settings["train_dataset"]))
    base, novel = split_names(settings, data.categories)
    data = drop_categories(data, set(novel))  # base annotations only (F-ViT's *_seen_* files)
    images = [im for im in data.images if im.boxes]  # mmdet filter_empty_gt
    if not images:
        raise UserFacingError(f"no image of {settings['train_dataset']} has a base-class box; check evaluate.ovd.novel")
    names = data.names
    label_of = {c["id"]: i + 1 for i, c in enumerate(data.categories)}
    model_bundle = load_eval_model(cfg, variant, checkpoint, device, family_dense_mode(cfg, "ovd"))
    embed = class_embeddings(model_bundle, names, settings["templates"])
    # The new layers' init and torchvision's RPN / RoI samplers (torch.randperm) draw from the global RNG:
    # seeded, so the same commit, config and threads give the same detector (as distillation does).
    torch.manual_seed(cfg["seed"])
    model = FViT(model_bundle.dense, embed, novel_mask(names, novel), d).to(device)
    params = [p for n, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=d["lr"], betas=(0.9, 0.999), weight_decay=d["weight_decay"])
    net = model
    if dist_env.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                      find_unused_parameters=True)
    steps_per_epoch = math.ceil(len(images) / d["batch_size"])
    total = total_steps(d["epochs"], len(images), d["batch_size"], d["max_steps"])
    gen = torch.Generator().manual_seed(cfg["seed"] * 1000 + dist_env.rank)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    losses_path = out.with_name("losses.jsonl")
    student, size = cfg["student"], d["image_size"]
    start, log_lines = time.time(), []
    model.train()
    model.dense.eval()  # frozen tower: no dropout / norm statistics updates
    for step in tqdm(range(total), desc=f"detector {variant}", disable=not dist_env.main):
        idx = step_indices(len(images), d["batch_size"], cfg["seed"], step)[dist_env.rank::dist_env.world_size]
        batch, targets = [], []
        for i in idx:
            im = images[i]
            img, boxes, keep = jitter(load_image(im.path), torch.tensor(im.boxes, dtype=torch.float32), size,
                                      d["scale_range"], bool(torch.rand(1, generator=gen) < d["flip"]), gen)
            batch.append(normalize(img, student["mean"], student["std"]))
            labels = torch.tensor([label_of[c] for c in im.category_ids])[keep]
            targets.append({"boxes": boxes[keep].to(device), "labels": labels.to(device)})
        for g in optimizer.param_groups:
            g["lr"] = d["lr"] * lr_at(step, steps_per_epoch, d)
        loss_terms = net(torch.stack(batch).to(device), targets)
        loss = sum(loss_terms.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, d["grad_clip"])
        optimizer.step()
        if dist_env.main and (step % d["log_every"] == 0 or step == total - 1):
            log_lines.append({"step": step, "loss": loss.item(), **{k: v.item() for k, v in loss_terms.items()}})
    seconds = time.time() - start
    if dist_env.main:
        losses_path.write_text("".join(json.dumps(r) + "\n" for r in log_lines))
        torch.save({"state": model.trainable_state(), "names": names, "novel": list(novel), "base": list(base),
                    "settings": d, "variant": variant, "steps": total, "train_images": len(images)}, out)
        log.info("detector %s: %d steps on %d images in %.1f s", variant, total, len(images), seconds)
    final = log_lines[-1] if log_lines else {}
    return {"metrics": {"final_loss": final.get("loss", math.nan), "steps": total, "seconds": seconds},
            "step_metrics": str(losses_path), "artifacts": [str(out)]}


# ---------------------------------------------------------------- evaluation

def detect(model, data, settings: dict, student: dict, device, progress=True) -> list[dict]:
    import torch
    from tqdm import tqdm

    from declip.data.images import load_image

    size = settings["detector"]["image_size"]
    cat_ids = [c["id"] for c in data.categories]
    dets = []
    model.eval()
    with torch.no_grad():
        for im in tqdm(data.images, desc="ovd detector", disable=not progress):
            x, scale = prepare(load_image(im.path), size, student)
            r = model(x[None].to(device))[0]
            dets += to_results(r["boxes"].cpu(), r["scores"].cpu(), r["labels"].cpu(), im.id, scale, cat_ids)
    return dets


def read_proposals(path, image_ids: set) -> dict[int, list]:
    """A proposal file: COCO results-style list of {image_id, bbox [x, y, w, h]} -> x1y1x2y2 per image."""
    from declip.metrics.ovcoco import load_json

    props = load_json(path, "proposal file")
    if not isinstance(props, list):
        raise UserFacingError(f"proposal file {path} must be a JSON list of {{image_id, bbox: [x, y, w, h]}}")
    out: dict[int, list] = {}
    for p in props:
        if p.get("image_id") not in image_ids or len(p.get("bbox", [])) != 4:
            raise UserFacingError(f"proposal file {path}: bad entry {p!r:.200} (unknown image_id or bbox not [x, y, w, h])")
        x, y, w, h = p["bbox"]
        out.setdefault(p["image_id"], []).append([x, y, x + w, y + h])
    return out


def boxclf(model, data, settings: dict, student: dict, progress=True) -> list[dict]:
    """Training-free box classification (see the module docstring)."""
    import torch
    from tqdm import tqdm

    from declip.data.images import load_image
    from declip.distill.losses import region_features
    from declip.distill.regions import to_rois

    b = settings["boxclf"]
    size = b["image_size"] or settings["detector"]["image_size"]
    embed = class_embeddings(model, data.names, settings["templates"])
    proposals = read_proposals(b["proposals"], {im.id for im in data.images}) if b["proposals"] else None
    cat_ids = [c["id"] for c in data.categories]
    k = min(b["topk"], len(cat_ids))
    dets = []
    with torch.no_grad():
        for im in tqdm(data.images, desc="ovd boxclf", disable=not progress):
            boxes = proposals.get(im.id, []) if proposals is not None else im.boxes
            if not boxes:
                continue
            x, scale = prepare(load_image(im.path), size, student)
            content = model.dense(x[None].to(model.device)).content.float()
            rois = to_rois([torch.tensor(boxes, dtype=torch.float32, device=model.device) * scale])
            probs = (region_features(content, rois, size) @ embed.T * b["temperature"]).softmax(-1)
            top = probs[:, 1:].topk(k, dim=1)  # background (column 0) is never emitted
            n = len(boxes)
            box_rep = (rois[:, 1:].cpu())[:, None].expand(n, k, 4).reshape(-1, 4)
            dets += to_results(box_rep, top.values.cpu().reshape(-1), top.indices.cpu().reshape(-1) + 1, im.id,
                               scale, cat_ids)
    return dets


def load_detector(cfg: dict, model_bundle, path, names: list[str], device):
    import torch

    from declip.evaluate.fvit import FViT

    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if list(ckpt["names"]) != list(names):
        raise UserFacingError(f"detector {path} was trained for classes {ckpt['names'][:5]}... but the evaluation set "
                              f"has {names[:5]}...: retrain it (`declip detector`) for this dataset")
    settings = cfg["evaluate"]["ovd"]
    embed = class_embeddings(model_bundle, names, settings["templates"])
    model = FViT(model_bundle.dense, embed, novel_mask(names, tuple(ckpt["novel"])), settings["detector"])
    missing = model.load_state_dict(ckpt["state"], strict=False)
    if missing.unexpected_keys or any(not k.startswith("dense.") for k in missing.missing_keys):
        raise UserFacingError(f"detector {path} does not match evaluate.ovd.detector's architecture: retrain it")
    return model.to(device).eval()


def main(args, cfg: dict) -> dict:
    """`declip evaluate ovd`: detections + metrics.json for one variant, mode and dataset."""
    from declip.data.detection import read_detection, split_names
    from declip.device import pick_device
    from declip.evaluate import write_metrics
    from declip.evaluate.text import family_dense_mode, load_eval_model

    settings = cfg["evaluate"]["ovd"]
    if args.mode not in MODES:
        raise UserFacingError(f"--mode {args.mode!r}: use one of {', '.join(MODES)}")
    name = args.dataset or settings["dataset"]
    data = read_detection(dataset_spec(cfg, name, args.data))
    base, novel = split_names(settings, data.categories)
    device = pick_device(args.device)
    bundle = load_eval_model(cfg, args.variant, args.checkpoint, device, family_dense_mode(cfg, "ovd"))
    start = time.time()
    if args.mode == "detector":
        if not args.detector:
            raise UserFacingError("--mode detector needs --detector PATH (results/ovd/<variant>/detector.pt)")
        dets = detect(load_detector(cfg, bundle, args.detector, data.names, device), data, settings, cfg["student"], device)
    else:
        dets = boxclf(bundle, data, settings, cfg["student"])
    scores = score_detections(settings, data, dets, base, novel)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    det_path = out.with_name("detections.json")
    det_path.write_text(json.dumps(dets))
    payload = {"family": "ovd", "mode": args.mode, "dataset": name, "scorer": settings["scorer"], **scores,
               "split": {"base": list(base), "novel": list(novel)}, "n_images": len(data.images),
               "seconds": time.time() - start}
    write_metrics(out, payload)
    return {"artifacts": [str(out), str(det_path)]}
