"""Dense features of a CLIP image tower: the normal forward and DeCLIP's decoupled last block.

Method: shared/docs/method.md sections 1-2 (paper arXiv 2505.04410 section 3; CLIPSelf for `value`;
SCLIP for `csa`). Two tower layouts are supported, both from upstream open_clip 3.x:
- open_clip's plain `VisionTransformer` (OpenAI ViT-B/16, ViT-L/14, the mini preset's tiny CLIP);
- `TimmModel` with a timm `Eva` trunk (EVA02-B-16, EVA02-L-14-336: RoPE, inner attention norm, SwiGLU).
Everything is batched over images, heads and tokens; the only Python loop runs over blocks.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from declip.errors import UserFacingError

MODES = ("vanilla", "value", "qq", "kk", "csa")
ATTN_SCALES = ("auto", "none", "sqrt_d")
CONTEXT_PROJS = ("auto", "q", "k", "qk")
TOKEN_NORMS = ("auto", True, False)
DECOUPLED_MODES = ("qq", "kk", "csa")
# The context features a mode's attention is built from (CVPR Eq. 6; DeCLIP eva_vit_model.py
# `Attention.ss_attn` l.305-310 returns q for qq_vfm_distill, k for kk_vfm_distill, (q, k) for csa).
MODE_CONTEXT = {"qq": "q", "kk": "k", "csa": "qk"}


@dataclass
class DenseOutput:
    content: torch.Tensor  # (B, C, h, w) language-aligned dense map, not normalised
    context: torch.Tensor | None  # (B, h*w, D') context tokens; None for vanilla / value
    token_norm: bool = False  # pool (RoIAlign / mask pooling) L2-normalised tokens (method.token_norm_before_pool)

    def pool_map(self) -> torch.Tensor:
        """The map RoIAlign and mask pooling read: `content`, each token L2-normalised when `token_norm`."""
        return F.normalize(self.content.float(), dim=1) if self.token_norm else self.content


def resolve_context_proj(dense_mode: str, context_proj: str) -> str | None:
    """`auto` -> the mode's own features (qq: Q, kk: K, csa: Q||K); an explicit value is a hybrid variant;
    None for modes without context tokens."""
    _check_choice(context_proj, CONTEXT_PROJS, "method.context_proj")
    if dense_mode not in DECOUPLED_MODES:
        return None
    return MODE_CONTEXT[dense_mode] if context_proj == "auto" else context_proj


def _check_choice(value: str, allowed: tuple, key: str) -> None:
    if value not in allowed:
        raise UserFacingError(f"{key} = {value!r} is not allowed; use one of {', '.join(allowed)}")


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, N, H*d) -> (B, H, N, d)."""
    b, n, _ = x.shape
    return x.reshape(b, n, num_heads, -1).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, N, d) -> (B, N, H*d), heads concatenated (method.md section 2)."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def _resize_pos_embed(pos: torch.Tensor, grid: tuple[int, int], old_grid: tuple[int, int], num_prefix: int):
    """Bicubic resize of a (1, prefix + gh*gw, D) table to `grid` (method.md section 2; CLIPSelf/DeCLIP
    `rescale_positional_embedding`: bicubic, align_corners=False, no antialias)."""
    if tuple(grid) == tuple(old_grid):
        return pos
    from timm.layers import resample_abs_pos_embed

    return resample_abs_pos_embed(pos, new_size=list(grid), old_size=list(old_grid),
                                  num_prefix_tokens=num_prefix, interpolation="bicubic", antialias=False)


def rope_embed(rope, grid: tuple[int, int], use_cache: bool = True) -> torch.Tensor:
    """timm's concatenated sin/cos RoPE table for any token grid.

    timm builds EVA02 towers with a fixed grid and caches that table; for other grids the coordinates are
    rescaled onto `rope.ref_feat_shape` exactly as EVA-CLIP's `VisionRotaryEmbeddingFast(ft_seq_len=...)`
    interpolates them (EVA-CLIP code; the CLIPSelf/DeCLIP towers are built at their training size).
    """
    from timm.layers import RotaryEmbeddingCat, build_rotary_pos_embed

    if not isinstance(rope, RotaryEmbeddingCat):
        raise NotImplementedError(f"RoPE module {type(rope).__name__} is not supported (EVA02 uses RotaryEmbeddingCat)")
    if use_cache and rope.feat_shape is not None and tuple(rope.feat_shape) == tuple(grid):
        return rope.get_embed()
    wanted = dict(in_pixels=rope.in_pixels, ref_feat_shape=rope.ref_feat_shape, grid_offset=rope.grid_offset,
                  grid_indexing=rope.grid_indexing, rotate_half=getattr(rope, "rotate_half", False),
                  grid_type=getattr(rope, "grid_type", None), normalize_coords=getattr(rope, "normalize_coords", None))
    accepted = inspect.signature(build_rotary_pos_embed).parameters
    kwargs = {k: v for k, v in wanted.items() if k in accepted and v is not None}
    sin, cos = build_rotary_pos_embed(list(grid), bands=rope.bands, device=rope.bands.device, **kwargs)
    return torch.cat([sin, cos], dim=-1)


class _PlainTower:
    """open_clip `VisionTransformer` (OpenAI layout: fused in_proj, ln_pre, ln_post, proj matrix)."""

    def __init__(self, visual):
        from open_clip.transformer import ResidualAttentionBlock

        if visual.attn_pool is not None or visual.pool_type != "tok":
            raise UserFacingError("dense features need a CLS-token CLIP tower (no attentional / average pooling)")
        for blk in visual.transformer.resblocks:
            if not isinstance(blk, ResidualAttentionBlock) or not blk.attn._qkv_same_embed_dim:
                raise UserFacingError(f"vision block type {type(blk).__name__} is not supported by declip.models.dense")
        self.visual = visual
        self.patch_size = visual.patch_size[0]
        self.width = visual.conv1.out_channels
        self.num_heads = visual.transformer.resblocks[0].attn.num_heads
        self.num_prefix = 1
        self.embed_dim = visual.output_dim
        self.batch_first = getattr(visual.transformer, "batch_first", True)

    # DeCLIP src/open_clip/transformer.py: `ss_attn`/`csa_attn` multiply the q-q/k-k logits by
    # head_dim**-0.5 (l.268-274, l.291-300), and `encode_dense` L2-normalises every token before RoIAlign
    # and mask pooling (l.591, CLIPSelf's line); see `upstream_attn_scale` / `upstream_token_norm`.
    upstream_attn_scale = "sqrt_d"
    upstream_token_norm = True

    @property
    def blocks(self):
        return self.visual.transformer.resblocks

    def embed(self, images):
        v = self.visual
        x = v.conv1(images)  # (B, D, h, w)
        grid = tuple(x.shape[-2:])
        x = x.flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)
        pos = _resize_pos_embed(v.positional_embedding[None], grid, v.grid_size, num_prefix=1)[0]
        # Patch dropout is skipped on purpose: a dense map needs every token.
        x = v.ln_pre(x + pos.to(x.dtype))
        return x, grid, None

    def run_block(self, blk, x, rope):
        if not self.batch_first:
            return blk(x.transpose(0, 1)).transpose(0, 1)
        return blk(x)

    def norm1(self, blk, x):
        return blk.ln_1(x)

    def qkv(self, blk, xn):
        q, k, v = F.linear(xn, blk.attn.in_proj_weight, blk.attn.in_proj_bias).chunk(3, dim=-1)
        return _heads(q, self.num_heads), _heads(k, self.num_heads), _heads(v, self.num_heads)

    def attn_out(self, blk, o):
        return blk.attn.out_proj(o)

    def residual_attn(self, blk, y):
        return blk.ls_1(y)

    def ffn(self, blk, x):
        return x + blk.ls_2(blk.mlp(blk.ln_2(x)))

    def head(self, tokens):
        t = self.visual.ln_post(tokens)
        return t @ self.visual.proj if self.visual.proj is not None else t

    # Parameter-name prefixes inside a block, for the freezing scheme (method.md section 1).
    ffn_names = ("mlp.",)
    norm2_names = ("ln_2.",)
    q_names = ()  # fused in_proj_weight: Q/K rows cannot be frozen separately (see set_trainable)
    k_names = ()
    q_bias_names = ()
    k_bias_names = ()

    def fused_qkv(self, blk) -> list:
        """Tensors whose rows are [Q; K; V] (width rows each)."""
        return [p for p in (blk.attn.in_proj_weight, blk.attn.in_proj_bias) if p is not None]


class _EvaTower:
    """open_clip `TimmModel` whose trunk is a timm `Eva` (EVA02-CLIP)."""

    def __init__(self, visual):
        from timm.models.eva import Eva, EvaAttention, EvaBlock

        trunk = visual.trunk
        if not isinstance(trunk, Eva):
            raise UserFacingError(f"timm trunk {type(trunk).__name__} is not supported; declip.models.dense handles Eva")
        if trunk.global_pool != "token" or trunk.attn_pool is not None or trunk.cls_token is None:
            raise UserFacingError("dense features need a CLS-token Eva tower (timm global_pool='token')")
        if getattr(trunk, "rope_mixed", False):
            raise UserFacingError("mixed-mode RoPE Eva towers are not supported by declip.models.dense")
        for blk in trunk.blocks:
            if type(blk) is not EvaBlock or type(blk.attn) is not EvaAttention or blk.attn.gate is not None:
                raise UserFacingError(f"Eva block type {type(blk).__name__} is not supported by declip.models.dense")
        self.visual = visual
        self.trunk = trunk
        self.patch_size = trunk.patch_embed.patch_size[0]
        self.width = trunk.embed_dim
        self.num_heads = trunk.blocks[0].attn.num_heads
        self.num_prefix = trunk.num_prefix_tokens
        with torch.no_grad():
            probe = torch.zeros(1, self.width, device=trunk.cls_token.device, dtype=trunk.cls_token.dtype)
            self.embed_dim = self.head(probe).shape[-1]
        first = trunk.blocks[0].attn
        fused = first.qkv is not None
        self.q_names = () if fused else ("attn.q_proj.",)
        self.k_names = () if fused else ("attn.k_proj.",)

    @property
    def blocks(self):
        return self.trunk.blocks

    def fused_qkv(self, blk) -> list:
        """Tensors whose rows are [Q; K; V]; Eva keeps its q/v biases apart (k has none)."""
        a = blk.attn
        return [p for p in (a.qkv.weight, a.qkv.bias) if p is not None] if a.qkv is not None else []

    def embed(self, images):
        t = self.trunk
        x = t.patch_embed.proj(images)  # (B, D, h, w); timm's own forward insists on the build size
        grid = tuple(x.shape[-2:])
        x = t.patch_embed.norm(x.flatten(2).transpose(1, 2))
        prefix = [t.cls_token.expand(x.shape[0], -1, -1)]
        if t.reg_token is not None:
            prefix.append(t.reg_token.expand(x.shape[0], -1, -1))
        prefix = [p.to(x.dtype) for p in prefix]
        pos = None
        if t.pos_embed is not None:
            n_pos_prefix = 0 if t.no_embed_class else self.num_prefix
            pos = _resize_pos_embed(t.pos_embed, grid, t.patch_embed.grid_size, n_pos_prefix).to(x.dtype)
        if t.no_embed_class:
            x = torch.cat(prefix + [x + pos if pos is not None else x], dim=1)
        else:
            x = torch.cat(prefix + [x], dim=1)
            x = x + pos if pos is not None else x
        x = t.norm_pre(t.pos_drop(x))
        rope = rope_embed(t.rope, grid) if t.rope is not None else None
        return x, grid, rope

    def run_block(self, blk, x, rope):
        return blk(x, rope=rope)

    def norm1(self, blk, x):
        return blk.norm1(x)

    def qkv(self, blk, xn):
        a = blk.attn
        if a.qkv is not None:
            bias = torch.cat([a.q_bias, a.k_bias, a.v_bias]) if a.q_bias is not None else None
            q, k, v = F.linear(xn, a.qkv.weight, bias).chunk(3, dim=-1)
        else:
            q, k, v = a.q_proj(xn), a.k_proj(xn), a.v_proj(xn)
        q, k, v = (_heads(z, a.num_heads) for z in (q, k, v))
        return a.q_norm(q), a.k_norm(k), v

    def attn_out(self, blk, o):
        return blk.attn.proj(blk.attn.norm(o))

    def residual_attn(self, blk, y):
        return blk.gamma_1 * y if blk.gamma_1 is not None else y

    def ffn(self, blk, x):
        y = blk.mlp(blk.norm2(x))
        return x + (blk.gamma_2 * y if blk.gamma_2 is not None else y)

    def head(self, tokens):
        t = self.trunk
        return self.visual.head(t.head(t.head_drop(t.fc_norm(t.norm(tokens)))))

    ffn_names = ("mlp.",)
    norm2_names = ("norm2.",)
    # Fused Eva keeps the q (and, when a parameter, k) bias outside the fused weight.
    q_bias_names = ("attn.q_bias",)
    k_bias_names = ("attn.k_bias",)

    # DeCLIP src/open_clip/eva_clip/eva_vit_model.py `Attention.ss_attn` l.277-289: no scale on the q-q/k-k
    # logits; `encode_dense` l.662-706 pools the tokens as they are (no L2 normalisation).
    upstream_attn_scale = "none"
    upstream_token_norm = False


def tower(visual):
    """The adapter for an open_clip image tower (plain ViT or timm Eva)."""
    from open_clip.timm_model import TimmModel
    from open_clip.transformer import VisionTransformer

    if isinstance(visual, VisionTransformer):
        return _PlainTower(visual)
    if isinstance(visual, TimmModel) or hasattr(visual, "trunk"):
        return _EvaTower(visual)
    raise UserFacingError(f"image tower {type(visual).__name__} is not supported (plain ViT or timm Eva only)")


class DenseCLIP(torch.nn.Module):
    """An open_clip CLIP with a dense forward: content map and context tokens (method.md section 2).

    dense_mode: `vanilla` (unmodified last block; CLIP baseline), `value` (CLIPSelf/MaskCLIP: x + proj(V),
    then x + FFN(norm2(x))), `qq` (DeCLIP), `kk`, `csa` (SCLIP). In the decoupled modes the last block is
    O = ls_1(proj(inner_norm(A V))) with no residual and no FFN, A = softmax(QQ^T) / softmax(KK^T) / their sum.
    context_proj: auto (the mode's own features: Q, K, or Q||K for csa, as upstream) | q | k | qk.
    OUR CHOICE for `qk`: each token's Q and K (heads concatenated, before RoPE) are L2-normalised and
    concatenated, divided by sqrt(2), so the cosine similarity of two context tokens is exactly the mean of
    their Q-Q and K-K cosine similarities (DeCLIP training/declip.py l.78-82 averages the two similarities).
    attn_scale / token_norm_before_pool: `auto` = the authors' code for this tower (see the tower classes).
    """

    def __init__(self, clip, dense_mode: str = "qq", attn_scale: str = "auto", context_proj: str = "auto",
                 token_norm_before_pool="auto"):
        super().__init__()
        _check_choice(dense_mode, MODES, "method.dense_mode")
        _check_choice(attn_scale, ATTN_SCALES, "method.attn_scale")
        _check_choice(token_norm_before_pool, TOKEN_NORMS, "method.token_norm_before_pool")
        self.clip = clip
        self._tower = tower(clip.visual)
        self.dense_mode = dense_mode
        self.context_proj = resolve_context_proj(dense_mode, context_proj)
        self.attn_scale = self._tower.upstream_attn_scale if attn_scale == "auto" else attn_scale
        self.token_norm = resolve_token_norm(self._tower, dense_mode, token_norm_before_pool)
        self.patch_size = self._tower.patch_size
        self.width = self._tower.width
        self.embed_dim = self._tower.embed_dim
        self.num_heads = self._tower.num_heads
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in the backward pass (560 px training of L/14 towers)."""
        self.grad_checkpointing = enable

    def _trunk(self, images):
        """Tokens entering the last block, the token grid and the RoPE table."""
        p = self.patch_size
        if images.shape[-1] % p or images.shape[-2] % p:
            raise ValueError(f"image size {tuple(images.shape[-2:])} is not a multiple of the patch size {p}")
        tw = self._tower
        x, grid, rope = tw.embed(images)
        for blk in tw.blocks[:-1]:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                from torch.utils.checkpoint import checkpoint

                x = checkpoint(tw.run_block, blk, x, rope, use_reentrant=False)
            else:
                x = tw.run_block(blk, x, rope)
        return x, grid, rope

    def encode_image(self, images) -> torch.Tensor:
        """(B, C) L2-normalised CLS embedding of the normal forward: the content teacher (method.md section 1)."""
        tw = self._tower
        x, _, rope = self._trunk(images)
        x = tw.run_block(tw.blocks[-1], x, rope)
        return F.normalize(tw.head(x[:, 0]), dim=-1)

    def forward(self, images) -> DenseOutput:
        tw = self._tower
        x, (h, w), rope = self._trunk(images)
        last = tw.blocks[-1]
        context = None
        if self.dense_mode == "vanilla":
            x = tw.run_block(last, x, rope)
        elif self.dense_mode == "value":
            # CLIPSelf `forward_without_attn`: attention replaced by the value path, residual and FFN kept.
            _, _, v = tw.qkv(last, tw.norm1(last, x))
            x = x + tw.residual_attn(last, tw.attn_out(last, _merge_heads(v)))
            x = tw.ffn(last, x)
        else:
            x, context = self._decoupled(last, x)
        content = tw.head(x[:, tw.num_prefix:])
        content = content.reshape(content.shape[0], h, w, -1).permute(0, 3, 1, 2)
        return DenseOutput(content=content, context=context, token_norm=self.token_norm)

    def _decoupled(self, blk, x):
        """Paper section 3 / method.md section 2: O = proj(inner_norm(A V)), no residual, no FFN, no RoPE."""
        tw = self._tower
        q, k, v = tw.qkv(blk, tw.norm1(blk, x))
        # The paper writes 1/sqrt(d); the released EVA code omits it, the plain-ViT code keeps it (method.attn_scale).
        scale = 1.0 if self.attn_scale == "none" else 1.0 / math.sqrt(q.shape[-1])
        if self.dense_mode == "qq":
            o = F.scaled_dot_product_attention(q, q, v, scale=scale)
        elif self.dense_mode == "kk":
            o = F.scaled_dot_product_attention(k, k, v, scale=scale)
        else:  # csa (SCLIP): (softmax(QQ^T) + softmax(KK^T)) V
            o = F.scaled_dot_product_attention(q, q, v, scale=scale) + F.scaled_dot_product_attention(k, k, v, scale=scale)
        # Layer scale (gamma_1 / ls_1) on the decoupled output, as upstream: DeCLIP eva_vit_model.py
        # `Block.forward_without_rcffn` l.394-404, transformer.py `ss_attn`/`csa_attn` l.279/l.307.
        out = tw.residual_attn(blk, tw.attn_out(blk, _merge_heads(o)))
        n = tw.num_prefix
        qc, kc = _merge_heads(q)[:, n:], _merge_heads(k)[:, n:]
        if self.context_proj == "qk":
            context = torch.cat([F.normalize(qc, dim=-1), F.normalize(kc, dim=-1)], dim=-1) / math.sqrt(2.0)
        else:
            context = qc if self.context_proj == "q" else kc
        return out, context


def resolve_token_norm(tw, dense_mode: str, token_norm_before_pool) -> bool:
    """`auto`: CLIPSelf normalises every token before pooling for both towers (CLIPSelf
    src/open_clip/transformer.py l.586, eva_clip/eva_vit_model.py l.620), so `value` does; DeCLIP keeps that
    line for plain towers only (see `_PlainTower` / `_EvaTower`)."""
    if token_norm_before_pool != "auto":
        return bool(token_norm_before_pool)
    return True if dense_mode == "value" else tw.upstream_token_norm


def dense_model(clip, method: dict, dense_mode: str | None = None, attn_scale: str | None = None) -> DenseCLIP:
    """DenseCLIP configured from a `method` section; dense_mode / attn_scale override it (per family)."""
    return DenseCLIP(clip, dense_mode=dense_mode or method.get("dense_mode", "qq"),
                     attn_scale=attn_scale or method.get("attn_scale", "auto"),
                     context_proj=method.get("context_proj", "auto"),
                     token_norm_before_pool=method.get("token_norm_before_pool", "auto"))


def set_trainable(clip, trainable_blocks: int | None, dense_mode: str, context_proj: str = "auto") -> list[str]:
    """Freezing scheme of method.md section 1; returns the names of the trainable parameters.

    Trainable: the last `trainable_blocks` image blocks (None = all). Frozen: patch embedding, positional
    embedding, CLS token, pre/final norms, projection head, the whole text tower, logit scale, and every
    last-block weight the mode never reads: FFN and norm2 in the decoupled modes, and the Q/K projections
    (`unused_projections`) - K in q-q mode with Q context, Q in k-k mode with K context (DeCLIP
    training/utils.py l.170-173 `*_kk_Distill_keys`), both in `value` mode (CLIPSelf reads only V). A weight
    without a gradient would also make DDP fail ("parameters that were not used in producing loss").
    Fused in_proj / qkv layouts (OpenAI ViTs, fused timm Eva) keep Q and K in one tensor, which stays
    trainable: the unused rows get exactly zero gradient, and `unused_fused_rows` names them so the trainer
    can undo AdamW's weight decay on them.
    """
    _check_choice(dense_mode, MODES, "method.dense_mode")
    tw = tower(clip.visual)
    blocks = tw.blocks
    n = len(blocks) if trainable_blocks is None else int(trainable_blocks)
    if not 1 <= n <= len(blocks):
        raise UserFacingError(
            f"method.trainable_blocks = {trainable_blocks} but the image tower has {len(blocks)} blocks; "
            f"use a number in 1..{len(blocks)} or null (all)")
    for p in clip.parameters():
        p.requires_grad_(False)
    for blk in blocks[len(blocks) - n:]:
        for p in blk.parameters():
            p.requires_grad_(True)
    frozen = list(tw.ffn_names) + list(tw.norm2_names) if dense_mode in DECOUPLED_MODES else []
    for unused in unused_projections(dense_mode, context_proj):
        frozen += list({"q": tw.q_names + tw.q_bias_names, "k": tw.k_names + tw.k_bias_names}[unused])
    for name, p in blocks[-1].named_parameters():
        if name.startswith(tuple(frozen)):
            p.requires_grad_(False)
    return sorted(name for name, p in clip.named_parameters() if p.requires_grad)


def unused_projections(dense_mode: str, context_proj: str = "auto") -> tuple[str, ...]:
    """The last-block projections ("q", "k") the mode never reads: K in q-q mode with Q context, Q in k-k
    mode with K context, both in `value` mode; none otherwise (vanilla reads both; csa or a Q||K context too)."""
    if dense_mode == "value":
        return ("q", "k")
    pair = (dense_mode, resolve_context_proj(dense_mode, context_proj))
    return {("qq", "q"): ("k",), ("kk", "k"): ("q",)}.get(pair, ())


def unused_fused_rows(clip, dense_mode: str, context_proj: str = "auto") -> list[tuple]:
    """(tensor, row slice) pairs of the last block's fused q/k/v tensors holding `unused_projections`. They
    get no gradient, but decoupled weight decay (AdamW) would still shrink them and change the saved
    model's vanilla forward; the trainer copies them back from the original after every step."""
    tw = tower(clip.visual)
    spans = {"q": slice(0, tw.width), "k": slice(tw.width, 2 * tw.width)}
    return [(p, spans[u]) for u in unused_projections(dense_mode, context_proj) for p in tw.fused_qkv(tw.blocks[-1])]
