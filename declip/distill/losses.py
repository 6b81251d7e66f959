"""The distillation losses: content (L_self, RCC) and context (L2 / KL on similarity rows), method.md 3-5.

Everything runs batched on the training device; features are cast to fp32 before any loss so that
bf16/fp16 autocast affects only the forwards. Boxes are RoIs (R, 5) = (batch index, x1, y1, x2, y2)
in pixels of the square letterboxed student image of side `image_size`.
"""

from __future__ import annotations

from dataclasses import dataclass


def crop_targets(teacher, originals: list, boxes: list, crop_size: int, mean, std):
    """Content-teacher targets (method.md 3): each region cut from its ORIGINAL-resolution image and resized
    as the authors do (declip.data.crops.box_crops: PIL crop, ResizeMaxSize bicubic with centred padding),
    then ONE forward of the frozen original CLIP, L2-normalised.

    originals: per image (3, H, W) in [0, 1]; boxes: per image (k_i, 4) x1, y1, x2, y2 in its pixels.
    """
    import torch
    import torch.nn.functional as F

    from declip.data.crops import box_crops
    from declip.data.images import normalize

    dev = next((p.device for p in teacher.parameters()), None) if hasattr(teacher, "parameters") else None
    with torch.no_grad():
        crops = torch.cat([box_crops(img.to(dev) if dev is not None else img, b.tolist(), crop_size)
                           for img, b in zip(originals, boxes)])
        return F.normalize(teacher.encode_image(normalize(crops, mean, std)).float(), dim=-1)


def region_features(content, rois, image_size: int):
    """Student region embeddings: RoIAlign 1x1 (aligned, adaptive sampling) of the dense map, L2-normalised (method.md 3).

    `content` is the map pooled as is: pass `DenseOutput.pool_map()` for token normalisation before pooling."""
    import torch.nn.functional as F
    from torchvision.ops import roi_align

    scale = content.shape[-1] / image_size
    feats = roi_align(content.float(), rois.float(), output_size=1, spatial_scale=scale, sampling_ratio=-1, aligned=True)
    return F.normalize(feats.flatten(1), dim=-1)
def self_loss(student_feats, teacher_feats):
    """L_self = mean over regions of 1 - cos(f_student, f_teacher) (CLIPSelf / method.md 3); inputs L2-normalised."""
    return (1.0 - (student_feats * teacher_feats).sum(-1)).mean()


def cosine_similarity_matrix(tokens):
    """(B, N, D) -> (B, N, N) cosine similarities among tokens (S of method.md 4, R of RCC)."""
    import torch.nn.functional as F

    t = F.normalize(tokens.float(), dim=-1)
    return t @ t.transpose(1, 2)


def rowwise_kl(target_logits, student_logits, temperature: float):
    """Mean over rows of KL(softmax(target/t) || softmax(student/t)) (journal context loss and RCC)."""
    import torch.nn.functional as F

    logp = F.log_softmax(target_logits / temperature, dim=-1)
    logq = F.log_softmax(student_logits / temperature, dim=-1)
    return (logp.exp() * (logp - logq)).sum(-1).mean()


def rcc_loss(content, vfm_map, rois, image_size: int, grid: int, temperature: float):
    """Region Correlation Constraint (journal): per region NxN RoIAlign of both maps, KL of correlation rows.

    content: (B, C, h, w) student dense map; vfm_map: (B, D, hv, wv) VFM tokens. Both maps are token grids
    over the same square letterbox, so each uses its own spatial scale (grid side / image_size).
    """
    from torchvision.ops import roi_align

    def grid_tokens(fmap):
        scale = fmap.shape[-1] / image_size
        g = roi_align(fmap.float(), rois.float(), output_size=grid, spatial_scale=scale, sampling_ratio=-1, aligned=True)
        return g.flatten(2).transpose(1, 2)  # (R, N*N, D)

    r_clip = cosine_similarity_matrix(grid_tokens(content))
    r_vfm = cosine_similarity_matrix(grid_tokens(vfm_map))
    return rowwise_kl(r_vfm, r_clip, temperature)


def resize_tokens(tokens, grid, target_grid):
    """Bilinearly resize (B, h*w, D) token features from grid (h, w) to target_grid (method.md 4, grids differ)."""
    import torch.nn.functional as F

    h, w = grid
    if tuple(grid) == tuple(target_grid):
        return tokens
    b, _, d = tokens.shape
    fmap = tokens.transpose(1, 2).reshape(b, d, h, w)
    fmap = F.interpolate(fmap, size=tuple(target_grid), mode="bilinear", align_corners=False)
    return fmap.flatten(2).transpose(1, 2)


def context_loss(student_tokens, vfm_tokens, kind: str, temperature: float, affinity=None):
    """Context distillation on token similarities (method.md 4).

    l2 (CVPR): mean over rows of ||S_vfm[i] - S_clip[i]||_2, not squared.
    kl (journal): row-wise KL(softmax(S_hat_vfm/t) || softmax(S_clip/t)), S_hat = sd_gsc(A_sd, S_vfm) when
    an SD affinity is given, else S_vfm.
    """
    s_clip = cosine_similarity_matrix(student_tokens)
    s_vfm = cosine_similarity_matrix(vfm_tokens)
    if affinity is not None:
        from declip.models.sd import sd_gsc

        s_vfm = sd_gsc(affinity.float(), s_vfm)
    if kind == "l2":
        return (s_vfm - s_clip).norm(dim=-1).mean()
    if kind == "kl":
        return rowwise_kl(s_vfm, s_clip, temperature)
    raise ValueError(f"unknown context loss {kind!r}")


@dataclass
class Teachers:
    """Teacher outputs for one micro-batch: crop targets (R, C), VFM tokens (B, hv, wv, D), SD affinity (B, N, N)."""

    crops: object
    vfm: object = None
    affinity: object = None


def distill_losses(out, rois, teachers: Teachers, method: dict, image_size: int) -> dict:
    """All loss terms of one micro-batch and L = L_self + L_rcc + lambda * L_context (method.md 5).

    `out` is a DenseOutput (content (B,C,h,w), context (B,h*w,D') or None). Absent terms are 0.
    """
    import torch

    content = out.content
    # RoIAlign reads the normalised tokens when method.token_norm_before_pool says so (DenseOutput.pool_map).
    pooled = out.pool_map() if hasattr(out, "pool_map") else content
    zero = content.new_zeros((), dtype=torch.float32)
    terms = {"loss_self": zero, "loss_rcc": zero, "loss_context": zero}
    if method["content_loss"] == "self":
        terms["loss_self"] = self_loss(region_features(pooled, rois, image_size), teachers.crops)
    vfm_map = None if teachers.vfm is None else teachers.vfm.permute(0, 3, 1, 2)
    if method["rcc"]:
        terms["loss_rcc"] = rcc_loss(pooled, vfm_map, rois, image_size, method["rcc_grid"], method["rcc_temperature"])
    if method["context_loss"] != "none":
        grid = tuple(content.shape[-2:])
        # Coupled ablation (CVPR Table 1): the context loss acts on the dense map itself.
        tokens = content.flatten(2).transpose(1, 2) if method["coupled"] else out.context
        tokens = resize_tokens(tokens.float(), grid, tuple(vfm_map.shape[-2:]))
        terms["loss_context"] = context_loss(tokens, teachers.vfm.flatten(1, 2), method["context_loss"],
                                             method["context_temperature"],
                                             teachers.affinity if method["sd_gsc"] else None)
    terms["loss"] = terms["loss_self"] + terms["loss_rcc"] + method["lambda_context"] * terms["loss_context"]
    return terms


def needs(method: dict) -> dict:
    """Which teachers a variant's losses read: {"vfm": bool, "sd": bool}."""
    vfm = method["rcc"] or method["context_loss"] != "none"
    return {"vfm": vfm, "sd": vfm and method["context_loss"] != "none" and method["sd_gsc"]}
