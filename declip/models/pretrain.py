"""Contrastive pretraining of the mini preset's tiny CLIP on the mini 2D world's captions.

The mini world needs a CLIP with real vision-language alignment before DeCLIP can distil it. The tiny
open_clip model is trained CLIP-style (symmetric InfoNCE, learnable temperature) on train-split
image-caption pairs plus on-the-fly object crops captioned "a photo of a {name}." (the same images,
their annotated boxes). Zero-shot accuracy is measured on the held-out `single` split, which no
training step ever reads.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np

from declip.config import resolve_path
from declip.data.mini2d import noun_phrase
from declip.errors import UserFacingError

log = logging.getLogger(__name__)

# Prompt templates for object crops and for the zero-shot class embeddings (CLIP-style prompt ensemble);
# "{}" takes the noun phrase with its article ("a chair", "an ...").
TEMPLATES = (
    "a photo of {}.",
    "a picture of {}.",
    "{}.",
    "an image of {}.",
    "a close-up photo of {}.",
    "a rendering of {}.",
)


def prompt(template: str, name: str) -> str:
    return template.format(noun_phrase(name))


def dataset_root(data: str | Path) -> Path:
    """The mini2d root from either the root folder or its MANIFEST.json (the rule's input)."""
    path = resolve_path(data)
    root = path.parent if path.name == "MANIFEST.json" else path
    if not (root / "MANIFEST.json").exists():
        raise UserFacingError(f"{root} is not a complete mini2d dataset (no MANIFEST.json): run `declip dataset mini2d --out {root}` first")
    return root


class PretrainData:
    """The train split in memory (images, captions, object boxes) and a batched augmenting sampler."""

    def __init__(self, root: Path, student_cfg: dict, image_size: int):
        import torch

        from declip.data.images import load_image

        caps = json.loads((root / "annotations" / "captions_train.json").read_text())
        inst = json.loads((root / "annotations" / "instances_train.json").read_text())
        images = sorted(caps["images"], key=lambda im: im["id"])
        index = {im["id"]: i for i, im in enumerate(images)}
        self.images = torch.stack([load_image(root / "train" / im["file_name"]) for im in images])
        names = {c["id"]: c["name"] for c in inst["categories"]}
        caption_of = {a["image_id"]: a["caption"] for a in caps["annotations"]}
        # Every distinct text gets an id; equal ids are positives of each other in the loss.
        self.texts: list[str] = []
        text_id: dict[str, int] = {}

        def tid(text: str) -> int:
            if text not in text_id:
                text_id[text] = len(self.texts)
                self.texts.append(text)
            return text_id[text]

        self.caption_ids = torch.tensor([tid(caption_of[im["id"]]) for im in images])
        crop_text_ids = {cid: torch.tensor([tid(prompt(t, n)) for t in TEMPLATES]) for cid, n in names.items()}
        boxes = [(index[a["image_id"]], *a["bbox"], a["category_id"]) for a in inst["annotations"]
                 if min(a["bbox"][2], a["bbox"][3]) >= 4]
        self.obj = torch.tensor(boxes, dtype=torch.float32)  # (N, 6): image index, x, y, w, h, category
        # (max category id + 1, templates): row = category id, so a crop's prompt ids are one gather.
        self.crop_table = torch.zeros(max(names) + 1, len(TEMPLATES), dtype=torch.long)
        for cid, ids in crop_text_ids.items():
            self.crop_table[cid] = ids
        self.image_size = image_size
        self.mean, self.std = student_cfg["mean"], student_cfg["std"]

    def sample(self, batch_size: int, crop_fraction: float, gen):
        """(normalised images (B,3,S,S), text ids (B,)): whole-image views and object crops, augmented."""
        import torch
        from torchvision.ops import roi_align

        from declip.data.images import normalize

        n_crop = int(round(batch_size * crop_fraction))
        n_full = batch_size - n_crop
        side = float(self.images.shape[-1])
        # Whole images: a random-resized crop keeping 80-100% of the side, so captioned objects stay in view.
        idx_full = torch.randint(len(self.images), (n_full,), generator=gen)
        s = side * (0.8 + 0.2 * torch.rand(n_full, generator=gen))
        x0, y0 = (side - s) * torch.rand(n_full, generator=gen), (side - s) * torch.rand(n_full, generator=gen)
        full_boxes = torch.stack([x0, y0, x0 + s, y0 + s], 1)
        # Object crops: a square 1.2-2.2x the object's long side around its (jittered) centre.
        pick = self.obj[torch.randint(len(self.obj), (n_crop,), generator=gen)]
        cx, cy = pick[:, 1] + pick[:, 3] / 2, pick[:, 2] + pick[:, 4] / 2
        half = pick[:, 3:5].max(1).values * (1.2 + torch.rand(n_crop, generator=gen)) / 2
        cx = cx + (torch.rand(n_crop, generator=gen) - 0.5) * half * 0.4
        cy = cy + (torch.rand(n_crop, generator=gen) - 0.5) * half * 0.4
        crop_boxes = torch.stack([cx - half, cy - half, cx + half, cy + half], 1)
        idx = torch.cat([idx_full, pick[:, 0].long()])
        boxes = torch.cat([idx.float()[:, None], torch.cat([full_boxes, crop_boxes])], 1)
        x = roi_align(self.images, boxes, self.image_size, spatial_scale=1.0, sampling_ratio=2, aligned=True)
        flip = torch.rand(batch_size, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        # Mild brightness/contrast jitter: colour stays the cue, exact values do not.
        gain = 1 + (torch.rand(batch_size, 1, 1, 1, generator=gen) - 0.5) * 0.2
        bias = (torch.rand(batch_size, 1, 1, 1, generator=gen) - 0.5) * 0.1
        x = ((x - 0.5) * gain + 0.5 + bias).clamp(0, 1)
        template = torch.randint(len(TEMPLATES), (n_crop,), generator=gen)
        crop_ids = self.crop_table[pick[:, 5].long(), template]
        text_ids = torch.cat([self.caption_ids[idx_full], crop_ids])
        return normalize(x, self.mean, self.std), text_ids


def contrastive_loss(image_feats, text_feats, logit_scale, text_ids):
    """Symmetric InfoNCE (CLIP, Radford et al. 2021) where pairs with the same text are all positives
    (soft targets as in UniCL, Yang et al. 2022): repeated prompts in a batch are not false negatives."""
    import torch.nn.functional as F

    logits = logit_scale * image_feats @ text_feats.t()
    pos = (text_ids[:, None] == text_ids[None, :]).float()
    target = pos / pos.sum(1, keepdim=True)
    loss_i2t = -(target * F.log_softmax(logits, 1)).sum(1).mean()
    loss_t2i = -(target * F.log_softmax(logits.t(), 1)).sum(1).mean()
    return (loss_i2t + loss_t2i) / 2


def lr_at(progress: float, warmup_fraction: float, base_lr: float) -> float:
    """Linear warm-up then cosine decay to 0 (CLIP / open_clip schedule), as a function of progress in [0, 1]."""
    if progress < warmup_fraction:
        return base_lr * progress / warmup_fraction
    p = min(1.0, (progress - warmup_fraction) / max(1e-8, 1 - warmup_fraction))
    return base_lr * 0.5 * (1 + math.cos(math.pi * p))


def class_text_features(model, tok, names: list[str], templates=TEMPLATES):
    """Prompt-ensembled class embeddings: L2-normalise per template, average, renormalise (CLIP)."""
    import torch

    texts = [prompt(t, n) for n in names for t in templates]
    with torch.no_grad():
        f = model.encode_text(tok(texts), normalize=True).view(len(names), len(templates), -1).mean(1)
    return f / f.norm(dim=-1, keepdim=True)


def zero_shot_accuracy(image_feats, class_feats, labels) -> float:
    """Top-1 accuracy in percent of argmax cosine similarity (labels index the rows of class_feats)."""
    pred = (image_feats @ class_feats.t()).argmax(1)
    return float((pred == labels).float().mean() * 100)


def evaluate_single(model, student_cfg: dict, root: Path, image_size: int) -> dict:
    """Zero-shot classification of the held-out single-object split with the class-name prompt ensemble."""
    import torch

    from declip.data.images import letterbox, load_image, normalize
    from declip.models.clip import tokenizer

    single = json.loads((root / "annotations" / "single.json").read_text())
    cats = sorted(single["categories"], key=lambda c: c["id"])
    row = {c["id"]: i for i, c in enumerate(cats)}
    labels = torch.tensor([row[im["category_id"]] for im in single["images"]])
    imgs = torch.stack([letterbox(load_image(root / "single" / im["file_name"]), image_size)[0] for im in single["images"]])
    imgs = normalize(imgs, student_cfg["mean"], student_cfg["std"])
    model.eval()
    with torch.no_grad():
        class_feats = class_text_features(model, tokenizer(student_cfg), [c["name"] for c in cats])
        feats = torch.cat([model.encode_image(b, normalize=True) for b in imgs.split(100)])
    pred = (feats @ class_feats.t()).argmax(1)
    per_class = {c["name"]: float((pred[labels == i] == i).float().mean() * 100) for i, c in enumerate(cats) if (labels == i).any()}
    return {"zero_shot_acc": zero_shot_accuracy(feats, class_feats, labels), "per_class": per_class,
            "n_images": len(labels), "chance": 100.0 / len(cats)}


def pretrain(cfg: dict, data: str | Path, out: str | Path) -> dict:
    """Train the tiny CLIP, save it with save_clip, write pretrain_metrics.json next to it; fail below the bar."""
    import torch
    from tqdm import tqdm

    from declip.models.clip import create_clip, param_groups, save_clip, tokenizer

    pc, student = cfg["mini"]["pretrain"], cfg["student"]
    threads = torch.get_num_threads()  # set once by the CLI's --threads
    torch.manual_seed(cfg["seed"])
    gen = torch.Generator().manual_seed(cfg["seed"])
    root, out = dataset_root(data), resolve_path(out)
    data_ = PretrainData(root, student, pc["image_size"])
    model = create_clip(student).train()
    if not pc["train_token_embedding"]:
        model.token_embedding.requires_grad_(False)
    text_tokens = tokenizer(student)(data_.texts)
    opt = torch.optim.AdamW(param_groups(model, pc["weight_decay"]), lr=pc["lr"], betas=(0.9, 0.98), eps=1e-6)
    warmup = pc["warmup_steps"] / max(1, pc["steps"])
    start, cpu_start, step, losses = time.perf_counter(), time.process_time(), 0, []
    bar = tqdm(total=pc["steps"], desc="pretrain", unit="step")
    while step < pc["steps"]:
        elapsed = time.perf_counter() - start
        if elapsed >= pc["max_seconds"]:
            log.warning("pretraining stopped by mini.pretrain.max_seconds=%s after %d of %d steps: this checkpoint "
                        "depends on the machine's speed (raise max_seconds for a reproducible one)",
                        pc["max_seconds"], step, pc["steps"])
            break
        # The schedule follows the steps only: wall time must not shape the weights (same commit, config and
        # threads give the same checkpoint whatever the machine's load). max_seconds is a safety stop.
        lr = lr_at(step / pc["steps"], warmup, pc["lr"])
        for g in opt.param_groups:
            g["lr"] = lr
        images, text_ids = data_.sample(pc["batch_size"], pc["crop_fraction"], gen)
        uniq, inverse = text_ids.unique(return_inverse=True)  # encode each distinct text once
        text_feats = model.encode_text(text_tokens[uniq], normalize=True)[inverse]
        image_feats = model.encode_image(images, normalize=True)
        loss = contrastive_loss(image_feats, text_feats, model.logit_scale.exp(), text_ids)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))  # CLIP caps the temperature at 100
        losses.append(loss.detach().item())
        step += 1
        bar.update(1)
        if step % 25 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-25:]):.3f}", lr=f"{lr:.2e}")
    bar.close()
    train_seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    log.info("pretrained %d steps in %.1f s (%.3f s/step, %d threads)", step, train_seconds, train_seconds / max(1, step), threads)
    result = evaluate_single(model, student, root, pc["image_size"])
    save_clip(model, out)
    metrics = {"zero_shot_acc": result["zero_shot_acc"], "seconds": train_seconds, "steps": step,
               "seconds_per_step": train_seconds / max(1, step), "threads": threads,
               "cpu_seconds_per_step": cpu_seconds / max(1, step),
               "final_loss": float(np.mean(losses[-25:])) if losses else None,
               "logit_scale": model.logit_scale.exp().item(), "per_class": result["per_class"],
               "chance": result["chance"], "n_images": result["n_images"], "checkpoint": str(out)}
    (out.parent / "pretrain_metrics.json").write_text(json.dumps(metrics, indent=2))
    log.info("zero-shot accuracy on the held-out single split: %.1f%% (%d images)", metrics["zero_shot_acc"], result["n_images"])
    if metrics["zero_shot_acc"] < pc["min_zero_shot_acc"] * 100:
        raise UserFacingError(
            f"tiny CLIP zero-shot accuracy {metrics['zero_shot_acc']:.1f}% is below mini.pretrain.min_zero_shot_acc="
            f"{pc['min_zero_shot_acc']}: raise mini.pretrain.steps or max_seconds (the machine may be too busy), "
            f"or lower the threshold; metrics in {out.parent / 'pretrain_metrics.json'}")
    return metrics
