"""Label-free pretraining of the mini preset's teachers on the mini 2D world's train images.

The real teachers learned from unlabelled images with their own objectives; the tiny ones do the same,
each in its upstream class (teachers.vfms.*.tiny / teachers.sd.tiny) and with its family's objective,
chosen once (not per ablation) and documented in the schema (`mini.teachers`):

- DINO v1 (`dino`): self-distillation with no labels (Caron et al. 2021): a student and an EMA teacher
  with a prototype head on the CLS token, multi-crop (2 global + local crops), teacher centring and
  sharpening, cross-entropy of every student view against the teacher's other global views.
- DINOv2 (`dinov2`, `dinov2_reg`): the DINO loss plus the iBOT masked-patch loss (Oquab et al. 2023):
  the student sees masked global crops (its mask token) and predicts the teacher's patch prototypes.
- SAM's image encoder (`sam`): SAM initialises its ViT from MAE; MAE drops tokens, which windowed
  attention cannot do, so we use the equivalent masked-image objective for windowed ViTs, SimMIM (Xie
  et al. 2022): mask tokens replace masked patches, a 1x1 head on the neck regresses their pixels (L1).
- Stable Diffusion: an AutoencoderKL trained to reconstruct (MSE + a small KL, no perceptual/GAN terms),
  its `scaling_factor` set to 1 / std of the latents (how SD's 0.18215 was chosen), then the UNet
  trained for epsilon prediction under SD 2.x's DDPM schedule on the fixed empty-prompt embedding.

Augmentations are random resized crops and flips only: the mini world's objects differ mostly in colour
and shape, and the real VFMs' features keep colour, so no colour jitter that would erase it.
No annotation file is read: only `{root}/train/*.png`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

from declip.config import resolve_path
from declip.errors import UserFacingError

log = logging.getLogger(__name__)

SD = "sd"


def weights_path(cfg: dict, name: str) -> Path | None:
    """Where the pretrained tiny teacher `name` (a VFM key or `sd`) lives; None for seeded random weights
    (`teachers.tiny_weights: null`) and for teachers loaded from a checkpoint (no `tiny` config)."""
    tc = cfg["teachers"]
    spec = tc["sd"] if name == SD else tc["vfms"].get(name, {})
    folder = tc.get("tiny_weights")
    return resolve_path(Path(folder) / f"{name}.pt") if folder and spec.get("tiny") else None


def weights_digest(cfg: dict, name: str) -> str | None:
    """sha256 of the pretrained tiny teacher file (part of the teacher cache fingerprint), or None."""
    import hashlib

    path = weights_path(cfg, name)
    if path is None:
        return None
    return hashlib.sha256(_existing(path).read_bytes()).hexdigest()


def _existing(path: Path) -> Path:
    if not path.exists():
        raise UserFacingError(f"pretrained tiny teacher {path} does not exist: run `snakemake {path}` (rule pretrain_teacher), "
                              "or set teachers.tiny_weights: null for seeded random teachers")
    return path


def load_weights(module_or_modules: dict, path: Path) -> dict:
    """Load a pretrained tiny teacher file into freshly built modules; returns the file's extra fields."""
    import torch

    blob = torch.load(_existing(path), map_location="cpu", weights_only=True)
    for key, module in module_or_modules.items():
        module.load_state_dict(blob[key])
    return {k: v for k, v in blob.items() if k not in module_or_modules}


# ---------------------------------------------------------------- data: unlabelled train images, crops
def train_images(root: Path):
    """(N,3,S,S) float [0,1] train images; only the image folder is read (no labels)."""
    import torch

    from declip.data.images import load_image

    files = sorted((root / "train").glob("*.png"))
    if not files:
        raise UserFacingError(f"no train images in {root / 'train'}: build the mini2d dataset first")
    return torch.stack([load_image(f) for f in files])


def random_boxes(n: int, side: float, scale: tuple[float, float], gen):
    """(n,4) square-ish random-resized-crop boxes covering `scale` of the image area (aspect 3/4..4/3)."""
    import torch

    area = side * side * (scale[0] + (scale[1] - scale[0]) * torch.rand(n, generator=gen))
    log_ratio = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * torch.rand(n, generator=gen)
    w = (area * log_ratio.exp()).sqrt().clamp(max=side)
    h = (area / log_ratio.exp()).sqrt().clamp(max=side)
    x0, y0 = (side - w) * torch.rand(n, generator=gen), (side - h) * torch.rand(n, generator=gen)
    return torch.stack([x0, y0, x0 + w, y0 + h], 1)


def crops(images, idx, out_size: int, scale: tuple[float, float], gen):
    """Random resized crops (with horizontal flips) of images[idx] at out_size x out_size."""
    import torch
    from torchvision.ops import roi_align

    boxes = random_boxes(len(idx), float(images.shape[-1]), scale, gen)
    x = roi_align(images, torch.cat([idx.float()[:, None], boxes], 1), out_size, spatial_scale=1.0, sampling_ratio=2, aligned=True)
    flip = torch.rand(len(idx), generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def scheduled(opt, budget, steps: int, warmup: int, base_lr: float):
    """Step indices within the budget, each after setting the warm-up + cosine learning rate (the tiny CLIP's)."""
    from declip.models.pretrain import lr_at

    for step in budget(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step / steps, warmup / steps, base_lr)
        yield step


def update(opt, loss, params=None, max_norm: float | None = None) -> float:
    """One optimiser step on `loss` (gradient-norm clipped when max_norm is given); returns the loss."""
    import torch

    opt.zero_grad(set_to_none=True)
    loss.backward()
    if max_norm is not None:
        torch.nn.utils.clip_grad_norm_(params, max_norm)
    opt.step()
    return float(loss.detach())


# ---------------------------------------------------------------- DINO / DINOv2 self-distillation
def _prototype_head(in_dim: int, hc: dict):
    import torch
    import torch.nn.functional as F

    class Head(torch.nn.Module):
        """DINO head: MLP -> L2-normalised bottleneck -> weight-normalised prototypes (norm fixed to 1)."""

        def __init__(self):
            super().__init__()
            self.mlp = torch.nn.Sequential(torch.nn.Linear(in_dim, hc["hidden"]), torch.nn.GELU(),
                                           torch.nn.Linear(hc["hidden"], hc["bottleneck"]))
            self.prototypes = torch.nn.Parameter(torch.randn(hc["prototypes"], hc["bottleneck"]) * 0.02)

        def forward(self, x):
            return F.normalize(self.mlp(x), dim=-1) @ F.normalize(self.prototypes, dim=-1).t()

    return Head()


def _vit_tokens(model, vfm_type: str, x, mask=None):
    """(CLS (B,D), patch tokens (B,N,D)) of a transformers DINO/DINOv2 model, last layer after the norm."""
    kwargs = {"interpolate_pos_encoding": True} if vfm_type == "dino" else {}
    if mask is not None:
        kwargs["bool_masked_pos"] = mask
    h = model(pixel_values=x, **kwargs).last_hidden_state
    prefix = 1 + (model.config.num_register_tokens if vfm_type == "dinov2_reg" else 0)
    return h[:, 0], h[:, prefix:]


def _sharpened(t, center, temp: float):
    return ((t - center) / temp).softmax(-1)


def _block_mask(b: int, n: int, ratio_range: tuple[float, float], block: int, gen):
    """(b, n*n) bool masks: random block x block token squares until the drawn ratio is covered."""
    import torch

    masks = torch.zeros(b, n, n, dtype=torch.bool)
    for i in range(b):
        target = ratio_range[0] + (ratio_range[1] - ratio_range[0]) * float(torch.rand(1, generator=gen))
        while masks[i].float().mean() < target:
            y, x = (int(v) for v in torch.randint(0, n - block + 1, (2,), generator=gen))
            masks[i, y:y + block, x:x + block] = True
    return masks.flatten(1)


def train_dino(model, vfm_type: str, images, mc: dict, gen, patch_size: int, budget) -> list[float]:
    """DINO (CLS) + iBOT (patches, DINOv2 only) self-distillation; `model` is the student, trained in place."""
    import copy

    import torch

    from declip.data.images import normalize

    ibot = vfm_type in ("dinov2", "dinov2_reg")
    dim = model.config.hidden_size
    head = _prototype_head(dim, mc["head"])
    teacher, t_head = copy.deepcopy(model).requires_grad_(False), copy.deepcopy(head).requires_grad_(False)
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=mc["lr"], weight_decay=mc["weight_decay"])
    center = torch.zeros(mc["head"]["prototypes"])
    patch_center = torch.zeros(mc["head"]["prototypes"])
    g_side, l_side = mc["global_tokens"] * patch_size, mc["local_tokens"] * patch_size
    bs, steps, losses = mc["batch_size"], mc["steps"], []
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    for step in scheduled(opt, budget, steps, mc["warmup_steps"], mc["lr"]):
        m = 1 - (1 - mc["momentum"]) * (math.cos(math.pi * step / steps) + 1) / 2  # DINO: cosine to 1
        idx = torch.randint(len(images), (bs,), generator=gen)
        globals_ = [normalize(crops(images, idx, g_side, tuple(mc["global_scale"]), gen), mean, std) for _ in range(2)]
        locals_ = [normalize(crops(images, idx, l_side, tuple(mc["local_scale"]), gen), mean, std) for _ in range(mc["n_local"])]
        with torch.no_grad():
            t_out = [_vit_tokens(teacher, vfm_type, g) for g in globals_]
            t_cls = [t_head(c) for c, _ in t_out]
            t_cls_p = [_sharpened(t, center, mc["teacher_temp"]) for t in t_cls]
        masks = [_block_mask(bs, mc["global_tokens"], tuple(mc["mask_ratio"]), 2, gen) if ibot else None for _ in globals_]
        s_global = [_vit_tokens(model, vfm_type, g, mk) for g, mk in zip(globals_, masks)]
        s_cls = [head(c) for c, _ in s_global] + [head(_vit_tokens(model, vfm_type, x)[0]) for x in locals_]
        loss, terms = 0.0, 0
        for ti, tp in enumerate(t_cls_p):
            for si, s in enumerate(s_cls):
                if si == ti:
                    continue
                loss = loss - (tp * (s / mc["student_temp"]).log_softmax(-1)).sum(-1).mean()
                terms += 1
        loss = loss / terms
        if ibot:
            patch_terms, t_patch_all = 0.0, []
            for (_, s_patch), (_, t_patch), mk in zip(s_global, t_out, masks):
                with torch.no_grad():
                    t_logits = t_head(t_patch[mk])
                    t_patch_all.append(t_logits)
                    tp = _sharpened(t_logits, patch_center, mc["teacher_temp"])
                patch_terms = patch_terms - (tp * (head(s_patch[mk]) / mc["student_temp"]).log_softmax(-1)).sum(-1).mean()
            loss = loss + patch_terms / len(masks)
        losses.append(update(opt, loss, params, 3.0))
        with torch.no_grad():
            for ps, pt in zip(params, list(teacher.parameters()) + list(t_head.parameters())):
                pt.mul_(m).add_(ps.detach(), alpha=1 - m)
            # Centring (DINO): an EMA of the teacher's mean output avoids collapse onto one prototype.
            center.mul_(mc["center_momentum"]).add_(torch.cat(t_cls).mean(0), alpha=1 - mc["center_momentum"])
            if ibot:
                patch_center.mul_(mc["center_momentum"]).add_(torch.cat(t_patch_all).mean(0), alpha=1 - mc["center_momentum"])
    # DINO evaluates (and ships) the teacher: the EMA weights are the better features.
    model.load_state_dict(teacher.state_dict())
    return losses


# ---------------------------------------------------------------- SAM encoder: SimMIM
def sam_masked_neck(encoder, x, mask=None, mask_token=None):
    """SAM encoder neck (B,C,h,w) for any input side; masked patch embeddings replaced by `mask_token`."""
    from declip.models.vfm import sam_neck_any_size

    if mask is None:
        return sam_neck_any_size(encoder, x)
    h = encoder.patch_embed.projection(x).permute(0, 2, 3, 1)
    b, gh, gw, d = h.shape
    m = mask.view(b, gh, gw, 1).to(h.dtype)
    h = h * (1 - m) + mask_token.view(1, 1, 1, d) * m
    return sam_neck_any_size(encoder, x, patch_tokens=h)


def train_simmim(encoder, images, mc: dict, gen, patch_size: int, budget) -> list[float]:
    """SimMIM: L1 regression of the (normalised) pixels of masked patches from the neck output."""
    import torch
    import torch.nn.functional as F

    from declip.data.images import normalize

    d, c = encoder.config.hidden_size, encoder.config.output_channels
    mask_token = torch.nn.Parameter(torch.zeros(d))
    head = torch.nn.Conv2d(c, patch_size * patch_size * 3, 1)
    params = list(encoder.parameters()) + [mask_token] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=mc["lr"], weight_decay=mc["weight_decay"])
    side, n, bs, steps, losses = mc["global_tokens"] * patch_size, mc["global_tokens"], mc["batch_size"], mc["steps"], []
    for _ in scheduled(opt, budget, steps, mc["warmup_steps"], mc["lr"]):
        idx = torch.randint(len(images), (bs,), generator=gen)
        x = normalize(crops(images, idx, side, tuple(mc["global_scale"]), gen), [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
        mask = _block_mask(bs, n, (mc["simmim_ratio"], mc["simmim_ratio"]), 2, gen)
        rec = F.pixel_shuffle(head(sam_masked_neck(encoder, x, mask, mask_token)), patch_size)
        pix_mask = mask.view(bs, 1, n, n).float().repeat_interleave(patch_size, 2).repeat_interleave(patch_size, 3)
        loss = ((rec - x).abs() * pix_mask).sum() / (pix_mask.sum() * 3).clamp_min(1)
        losses.append(update(opt, loss, params, 3.0))
    return losses


# ---------------------------------------------------------------- Stable Diffusion: VAE, then UNet
def train_sd(unet, vae, scheduler, embeds, images, sc: dict, gen, budget, resolution: int) -> tuple[list[float], list[float], float]:
    """VAE (MSE + kl_weight * KL), its latent scaling factor, then UNet epsilon prediction (SD 2.x base).

    Crops are `crop_size` pixels, or `resolution` (teachers.sd.resolution, the extraction input) when it is null,
    so the UNet learns at the latent size and (with `max_timestep`) the noise levels SD-GSC reads it at."""
    import torch
    import torch.nn.functional as F

    side = int(sc["crop_size"] or resolution)
    t_max = int(sc["max_timestep"] or scheduler.config.num_train_timesteps)
    opt = torch.optim.AdamW(vae.parameters(), lr=sc["lr"], weight_decay=0.0)
    vae_losses = []
    for _ in scheduled(opt, budget, sc["vae_steps"], sc["warmup_steps"], sc["lr"]):
        idx = torch.randint(len(images), (sc["batch_size"],), generator=gen)
        x = crops(images, idx, side, tuple(sc["scale"]), gen) * 2 - 1
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=gen)).sample
        vae_losses.append(update(opt, F.mse_loss(rec, x) + sc["kl_weight"] * post.kl().mean()))
    vae.eval().requires_grad_(False)
    with torch.no_grad():  # SD's scaling factor: unit-variance latents for the diffusion model
        probe = crops(images, torch.arange(min(len(images), 256)), side, (1.0, 1.0), gen) * 2 - 1
        scaling = float(1.0 / vae.encode(probe).latent_dist.sample(generator=gen).std())
    vae.register_to_config(scaling_factor=scaling)
    opt = torch.optim.AdamW(unet.parameters(), lr=sc["lr"], weight_decay=0.0)
    unet_losses = []
    for _ in scheduled(opt, budget, sc["unet_steps"], sc["warmup_steps"], sc["lr"]):
        idx = torch.randint(len(images), (sc["batch_size"],), generator=gen)
        x = crops(images, idx, side, tuple(sc["scale"]), gen) * 2 - 1
        with torch.no_grad():
            latents = vae.encode(x).latent_dist.sample(generator=gen) * scaling
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.randint(0, t_max, (len(x),), generator=gen)
        pred = unet(scheduler.add_noise(latents, noise, t), t, encoder_hidden_states=embeds.expand(len(x), -1, -1)).sample
        unet_losses.append(update(opt, F.mse_loss(pred, noise)))
    return vae_losses, unet_losses, scaling


# ---------------------------------------------------------------- driver
def _budget(max_seconds: float, name: str):
    """Step iterator with a progress bar that stops at the wall-time budget (the schedule still anneals)."""
    from tqdm import tqdm

    def steps(n: int):
        start = time.perf_counter()
        for step in tqdm(range(n), desc=f"pretrain {name}", unit="step"):
            if time.perf_counter() - start > max_seconds:
                log.warning("%s: stopped by mini.teachers.max_seconds=%s after %d of %d steps", name, max_seconds, step, n)
                return
            yield step

    return steps


def pretrain_teacher(cfg: dict, name: str, data_root: Path, out: str | Path) -> dict:
    """Train the tiny teacher `name` (a key of teachers.vfms, or `sd`) and save it to `out`."""
    import numpy as np
    import torch

    mc = cfg["mini"]["teachers"]
    torch.manual_seed(cfg["seed"])
    gen = torch.Generator().manual_seed(cfg["seed"])
    out = resolve_path(out)
    images = train_images(data_root)
    start, cpu_start = time.perf_counter(), time.process_time()
    budget = _budget(mc["max_seconds"], name)
    if name == SD:
        from declip.models.sd import _tiny_sd

        sd_cfg = cfg["teachers"]["sd"]
        if not sd_cfg.get("tiny"):
            raise UserFacingError("teachers.sd has no `tiny` config: only the mini preset's tiny SD is pretrained here")
        unet, vae, scheduler, embeds = _tiny_sd(sd_cfg, cfg["seed"])
        vae_l, unet_l, scaling = train_sd(unet.train(), vae.train(), scheduler, embeds, images, mc["sd"], gen, budget,
                                         int(sd_cfg["resolution"]))
        blob = {"unet": unet.state_dict(), "vae": vae.state_dict(), "scaling_factor": scaling}
        summary = {"objective": "vae_mse_kl+ddpm_eps", "vae_final_loss": float(np.mean(vae_l[-20:])),
                   "final_loss": float(np.mean(unet_l[-20:])), "steps": len(vae_l) + len(unet_l), "scaling_factor": scaling}
    else:
        from declip.models.vfm import _build_tiny

        spec = cfg["teachers"]["vfms"].get(name)
        if spec is None or not spec.get("tiny"):
            raise UserFacingError(f"teachers.vfms.{name} has no `tiny` config: only the mini preset's tiny VFMs are pretrained here")
        model = _build_tiny(spec, cfg["seed"]).train()
        patch = int(spec["patch_size"])
        if spec["type"] == "sam":
            losses = train_simmim(getattr(model, "vision_encoder", model), images, mc, gen, patch, budget)
            objective = "simmim"
        else:
            losses = train_dino(model, spec["type"], images, mc, gen, patch, budget)
            objective = "dino" if spec["type"] == "dino" else "dino+ibot"
        blob = {"model": model.state_dict()}
        summary = {"objective": objective, "final_loss": float(np.mean(losses[-20:])), "steps": len(losses)}
    # CPU seconds next to wall seconds: on a shared machine the wall time says more about the neighbours.
    summary.update(seconds=time.perf_counter() - start, cpu_seconds=time.process_time() - cpu_start,
                   threads=torch.get_num_threads(), teacher=name)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    torch.save(blob, tmp)
    tmp.replace(out)
    log.info("pretrained %s (%s) in %.1f s: %s", name, summary["objective"], summary["seconds"], json.dumps(summary))
    return summary
