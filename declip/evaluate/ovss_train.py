"""Training of the OVSS head with CAT-Seg's recipe (protocols.md section 4), one run per variant.

CAT-Seg (github KU-CVLAB/CAT-Seg): configs/config.yaml + configs/vitb_384.yaml give the schedule (AdamW,
lr 2e-4, weight decay 1e-4, CLIP lr x0.01, cosine, no warm-up, 80k iterations of 4 images, full-model
gradient clipping at L2 norm 0.01, 384 crops of images whose short side is resized to 384, colour
augmentation, horizontal flip); cat_seg_model.py l.57-75 fine-tunes, in every attention block of both
CLIP towers, only the query and value projection weights ("QV fine-tuning"); everything else of CLIP is
frozen. Here the fused open_clip in_proj_weight is trainable and its key rows are zeroed in the gradient
and restored after every step (AdamW's decoupled decay would move them otherwise).

Mini world: the training set's pixels of `evaluate.ovss.unseen_classes` are ignored and those classes are
left out of the training vocabulary, so the head never sees their masks or names during training.
Multi-GPU: torchrun (the distillation launcher) sets WORLD_SIZE; each process trains on its share of
every step's images (DDP), the total batch is evaluate.ovss.batch_size.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

from declip.config import dataset_spec, git_sha
from declip.errors import UserFacingError

log = logging.getLogger(__name__)


def _pin_rows(w, rows, pinned: list) -> None:
    """Train `w` but keep `rows` fixed: zero their gradient, restore them after each step."""

    def _zero(g, rows=rows):
        g = g.clone()
        g[rows] = 0
        return g

    w.requires_grad_(True)
    w.register_hook(_zero)
    pinned.append((w, rows, w.detach()[rows].clone()))


def set_finetune(clip, mode: str) -> list[tuple]:
    """Freeze CLIP except what `mode` trains; returns (tensor, row slice, original rows) to restore after each step.

    attention: the query and value projection weights of every attention block of both towers (CAT-Seg
    "attention"; biases, keys, output projections, MLPs, norms, embeddings stay frozen). Fused layouts
    (open_clip in_proj_weight, timm Eva qkv) train the whole tensor with the key rows pinned; separate
    q_proj / v_proj (timm Eva) train those weights. none: CLIP frozen; full: everything."""
    for p in clip.parameters():
        p.requires_grad_(mode == "full")
    pinned: list = []
    if mode != "attention":
        return pinned
    found = 0
    for _, mod in clip.named_modules():
        if getattr(mod, "in_proj_weight", None) is not None and hasattr(mod, "num_heads"):
            d = mod.in_proj_weight.shape[0] // 3
            _pin_rows(mod.in_proj_weight, slice(d, 2 * d), pinned)
            found += 1
        elif getattr(mod, "qkv", None) is not None and hasattr(mod, "num_heads"):
            d = mod.qkv.weight.shape[0] // 3
            _pin_rows(mod.qkv.weight, slice(d, 2 * d), pinned)
            found += 1
        elif getattr(mod, "q_proj", None) is not None and getattr(mod, "v_proj", None) is not None:
            mod.q_proj.weight.requires_grad_(True)
            mod.v_proj.weight.requires_grad_(True)
            found += 1
    if not found:
        raise UserFacingError("evaluate.ovss.clip_finetune = attention found no attention projections in this "
                              "model; use `none` or `full`")
    return pinned


def lr_factor(step: int, total: int) -> float:
    """detectron2 WarmupCosineLR with CAT-Seg's WARMUP_FACTOR 1.0 (no warm-up): 0.5 (1 + cos(pi t / T))."""
    return 0.5 * (1.0 + math.cos(math.pi * step / max(1, total)))


class CropDataset:
    """Training draws: draw k = step * batch + j takes image perm[k % N] with its own seeded augmentation."""

    def __init__(self, samples, vocab_map, oc: dict, seed: int, n_draws: int):
        import numpy as np

        self.samples, self.map, self.oc, self.seed, self.n = samples, vocab_map, oc, seed, n_draws
        self.order = np.random.default_rng(seed).permutation(len(samples))

    def __len__(self):
        return self.n

    def __getitem__(self, k: int):
        import numpy as np
        import torch
        import torch.nn.functional as F

        from declip.data.images import load_image
        from declip.data.semseg import read_index_png

        oc = self.oc
        rng = np.random.default_rng([self.seed, k])
        epoch, i = divmod(k, len(self.samples))
        s = self.samples[self.order[(i + epoch * 7919) % len(self.samples)]]
        img = load_image(s.image_path)
        lab = torch.from_numpy(self.map[read_index_png(s.gt_path).astype(np.int64)])
        # ResizeShortestEdge(short, max) then RandomCrop then flip (CAT-Seg MaskFormerSemanticDatasetMapper).
        h, w = img.shape[-2:]
        scale = min(oc["train_short_side"] / min(h, w), oc["train_max_size"] / max(h, w))
        nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)
        img = F.interpolate(img[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
        lab = F.interpolate(lab[None, None].float(), size=(nh, nw), mode="nearest")[0, 0].long()
        c = oc["crop_size"]
        y0 = int(rng.integers(0, max(nh - c, 0) + 1))
        x0 = int(rng.integers(0, max(nw - c, 0) + 1))
        img, lab = img[:, y0:y0 + c, x0:x0 + c], lab[y0:y0 + c, x0:x0 + c]
        if img.shape[-2:] != (c, c):  # pad right/bottom: image 0, label ignore (size_divisibility padding)
            ph, pw = c - img.shape[-2], c - img.shape[-1]
            img = F.pad(img, (0, pw, 0, ph))
            lab = F.pad(lab, (0, pw, 0, ph), value=255)
        if oc["color_aug"]:
            img = color_aug_ssd(img, rng)
        if rng.random() < 0.5:
            img, lab = img.flip(-1), lab.flip(-1)
        return img, lab


def color_aug_ssd(img, rng):
    """SSD photometric distortion as detectron2's ColorAugSSDTransform (brightness +-32/255, contrast and
    saturation x[0.5, 1.5], hue +-18 degrees, each with probability 0.5; contrast before or after the rest)."""
    import torchvision.transforms.functional as TF

    def contrast(x):
        return TF.adjust_contrast(x, float(rng.uniform(0.5, 1.5))) if rng.random() < 0.5 else x

    if rng.random() < 0.5:
        img = (img + float(rng.uniform(-32, 32)) / 255).clamp(0, 1)
    first = rng.random() < 0.5
    if first:
        img = contrast(img)
    if rng.random() < 0.5:
        img = TF.adjust_saturation(img, float(rng.uniform(0.5, 1.5)))
    if rng.random() < 0.5:
        img = TF.adjust_hue(img, float(rng.uniform(-18, 18)) / 360)
    if not first:
        img = contrast(img)
    return img.clamp(0, 1)


def training_vocabulary(cfg: dict, spec: dict, dataset: str):
    """(training class names, label map GT index -> training index or 255)."""
    import numpy as np

    from declip.evaluate.ovss import class_prompts, first_synonyms, split_vocabulary

    names = first_synonyms(class_prompts(cfg, dataset, spec))
    seen, _ = split_vocabulary(names, cfg["evaluate"]["ovss"]["unseen_classes"])
    lut = np.full(65536, 255, dtype=np.int64)
    for new, old in enumerate(seen):
        lut[old] = new
    return [names[i] for i in seen], lut


def train(cfg: dict, variant: str, checkpoint, out_path, device: str = "auto", data_root=None,
          on_step=None) -> dict:
    import torch
    from tqdm import tqdm

    from declip.data.semseg import list_samples
    from declip.distill.trainer import init_distributed
    from declip.evaluate.ovss import build_model
    from declip.models.catseg import catseg_loss
    from declip.models.clip import param_groups

    oc = cfg["evaluate"]["ovss"]
    dist_env, dev = init_distributed(device)
    torch.manual_seed(cfg["seed"])
    out_path = Path(out_path)
    out_dir = out_path.parent
    spec = dataset_spec(cfg, oc["train_dataset"], data_root)
    names, lut = training_vocabulary(cfg, spec, oc["train_dataset"])
    samples = list_samples(spec)
    model = build_model(cfg, variant, checkpoint, dev)
    pinned = set_finetune(model.clip, oc["clip_finetune"])
    steps, batch = oc["max_iter"], oc["batch_size"]
    if batch % dist_env.world_size:
        raise UserFacingError(f"evaluate.ovss.batch_size {batch} does not split over {dist_env.world_size} processes")
    per_rank = batch // dist_env.world_size
    head = model.head
    if dist_env.world_size > 1:
        head = torch.nn.parallel.DistributedDataParallel(
            model.head, device_ids=[dist_env.local_rank] if dev.type == "cuda" else None)
    # Head at lr, CLIP at lr x clip_multiplier (detectron2 build_optimizer in CAT-Seg's train_net.py).
    groups = [{**g, "lr": oc["lr"]} for g in param_groups(model.head, oc["weight_decay"])]
    groups += [{**g, "lr": oc["lr"] * oc["clip_multiplier"]} for g in param_groups(model.clip, oc["weight_decay"])]
    groups = [g for g in groups if g["params"]]
    for g in groups:
        g["base_lr"] = g["lr"]
    optimizer = torch.optim.AdamW(groups, lr=oc["lr"], weight_decay=oc["weight_decay"])
    params = [p for g in groups for p in g["params"]]
    data = CropDataset(samples, lut, oc, cfg["seed"], steps * batch)
    draws = [k for k in range(steps * batch) if k % dist_env.world_size == dist_env.rank]
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(data, draws), batch_size=per_rank,
                                         num_workers=oc["num_workers"], pin_memory=dev.type == "cuda")
    model.clip.train(), model.dense.train(), model.head.train()
    losses_path = out_dir / "losses.jsonl"
    if dist_env.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        losses_path.write_text("")
    start = time.time()
    bar = tqdm(total=steps, desc=f"ovss-train {variant}", disable=not dist_env.main, unit="step")
    last = None
    for step, (imgs, labs) in enumerate(loader):
        if step >= steps:
            break
        factor = lr_factor(step, steps)
        for g in optimizer.param_groups:
            g["lr"] = g["base_lr"] * factor
        imgs, labs = imgs.to(dev), labs.to(dev)
        text = model.text(names)
        logits = model.logits(imgs, text, tuple(oc["head"]["pooling_train"])) if dist_env.world_size == 1 else \
            _ddp_logits(model, head, imgs, text, tuple(oc["head"]["pooling_train"]))
        loss = catseg_loss(logits, labs, 255, oc["loss"], oc["loss_ignore"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if dist_env.world_size > 1:
            _sync_clip_grads(model.clip)
        if oc["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(params, oc["grad_clip"])
        optimizer.step()
        with torch.no_grad():
            for w, rows, orig in pinned:
                w[rows] = orig.to(w.device)
        last = float(loss.detach())
        if dist_env.main and ((step + 1) % oc["log_every"] == 0 or step + 1 == steps):
            with open(losses_path, "a") as f:
                f.write(json.dumps({"step": step + 1, "lr": oc["lr"] * factor, "loss": last}) + "\n")
            bar.set_postfix(loss=f"{last:.4f}")
        bar.update(1)
        if on_step is not None:
            on_step(step + 1, last)
    bar.close()
    seconds = time.time() - start
    if dist_env.main:
        tmp = out_path.with_suffix(".tmp")
        torch.save(model.state(), tmp)
        tmp.replace(out_path)
        prov = {"variant": variant, "steps": steps, "batch_size": batch, "world_size": dist_env.world_size,
                "train_dataset": oc["train_dataset"], "train_classes": names, "images": len(samples),
                "clip_finetune": oc["clip_finetune"], "final_loss": last, "seconds": round(seconds, 3),
                "device": str(dev), "git_sha": git_sha()}
        (out_dir / "provenance.json").write_text(json.dumps(prov, indent=2))
    if dist_env.world_size > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    log.info("ovss head %s: %d steps in %.1f s (%.2f images/s), final loss %s", variant, steps, seconds,
             steps * batch / max(seconds, 1e-9), last)
    return {"loss": last, "seconds": seconds, "losses": losses_path}


def _ddp_logits(model, head_ddp, imgs, text, pool):
    """The head through its DDP wrapper (gradient all-reduce); CLIP grads are averaged by _sync_clip_grads."""
    orig = model.head
    model.head = head_ddp
    try:
        return model.logits(imgs, text, pool)
    finally:
        model.head = orig


def _sync_clip_grads(clip) -> None:
    import torch.distributed as dist

    world = dist.get_world_size()
    for p in clip.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world


def main(args, cfg: dict) -> dict:
    """`declip evaluate ovss-train`: the trained head (+ fine-tuned CLIP) of one variant."""
    res = train(cfg, args.variant, args.checkpoint, args.out, device=args.device, data_root=args.data)
    out = Path(args.out)
    return {"metrics": {"ovss_final_loss": res["loss"]}, "artifacts": [str(out.parent / "provenance.json")],
            "step_metrics": str(res["losses"])}
