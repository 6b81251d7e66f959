"""DenseCLIP (declip.models.dense) against explicit matrix algebra written here from the raw weights.

Two tiny towers go through the real open_clip code paths: a plain `VisionTransformer` (custom open_clip
config) and a `TimmModel` whose trunk is a timm `Eva` (a tiny Eva registered with timm, EVA02-style:
RoPE, inner attention norm, SwiGLU with norm), both with separate and fused q/k/v.
"""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from declip.errors import UserFacingError
from declip.models.clip import create_clip
from declip.models.dense import DenseCLIP, rope_embed, set_trainable, unused_fused_rows

TEXT = {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}
MODES = ["vanilla", "value", "qq", "kk", "csa"]


def _register_tiny_eva(name: str, fused: bool) -> None:
    import timm
    from timm.models import register_model
    from timm.models.eva import Eva

    if name in timm.list_models():
        return

    def build(pretrained=False, **kwargs):
        for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kwargs.pop(key, None)
        # EVA02-CLIP's recipe (timm eva02_base_patch16_clip_224) at toy sizes; RoPE reference grid 5 != grid 4.
        args = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, qkv_fused=fused,
                    mlp_ratio=4 * 2 / 3, swiglu_mlp=True, scale_mlp=True, scale_attn_inner=True,
                    use_rot_pos_emb=True, ref_feat_shape=(5, 5), global_pool="token")
        args.update(kwargs)
        return Eva(**args)

    build.__name__ = name
    register_model(build)


def _perturb(model, seed=0):
    """Random non-trivial weights everywhere (LayerNorm gains, biases, q/v biases), deterministic."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def tiny_plain():
    cfg = {"model": "declip-test-plain", "custom_config": {
        "embed_dim": 16, "text_cfg": TEXT,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 8, "mlp_ratio": 2.0}}}
    return _perturb(create_clip(cfg))


def tiny_eva(fused=False):
    name = f"declip_test_tiny_eva{'_fused' if fused else ''}"
    _register_tiny_eva(name, fused)
    cfg = {"model": f"declip-test-{name}", "custom_config": {
        "embed_dim": 16, "text_cfg": TEXT, "custom_text": True,
        "vision_cfg": {"image_size": 32, "timm_model_name": name, "timm_model_pretrained": False,
                       "timm_pool": "token", "timm_proj": None}}}
    return _perturb(create_clip(cfg), seed=1)


TOWERS = {"plain": tiny_plain, "eva": tiny_eva, "eva_fused": lambda: tiny_eva(fused=True)}


@pytest.fixture(scope="module", params=list(TOWERS))
def clip(request):
    torch.manual_seed(0)
    return TOWERS[request.param]()


# ---- explicit algebra -------------------------------------------------------------------------------

def ln(x, mod):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + mod.eps) * mod.weight + mod.bias


def lin(x, w, b=None):
    y = x @ w.T
    return y + b if b is not None else y


def split_heads(x, h):
    b, n, dim = x.shape
    return x.reshape(b, n, h, dim // h).permute(0, 2, 1, 3)


def merge_heads(x):
    b, h, n, d = x.shape
    return x.permute(0, 2, 1, 3).reshape(b, n, h * d)


def is_eva(clip):
    return hasattr(clip.visual, "trunk")


def last_block(clip):
    return clip.visual.trunk.blocks[-1] if is_eva(clip) else clip.visual.transformer.resblocks[-1]


def manual_qkv(clip, blk, x):
    """Q, K, V (B, N, D) of the last block from its raw weights (no RoPE)."""
    if is_eva(clip):
        a, d = blk.attn, x.shape[-1]
        xn = ln(x, blk.norm1)
        if a.qkv is not None:
            wq, wk, wv = a.qkv.weight[:d], a.qkv.weight[d:2 * d], a.qkv.weight[2 * d:]
            bq, bv = a.q_bias, a.v_bias
        else:
            wq, wk, wv = a.q_proj.weight, a.k_proj.weight, a.v_proj.weight
            bq, bv = a.q_proj.bias, a.v_proj.bias
        return lin(xn, wq, bq), lin(xn, wk), lin(xn, wv, bv)
    a, d = blk.attn, x.shape[-1]
    xn = ln(x, blk.ln_1)
    w, b = a.in_proj_weight, a.in_proj_bias
    return lin(xn, w[:d], b[:d]), lin(xn, w[d:2 * d], b[d:2 * d]), lin(xn, w[2 * d:], b[2 * d:])


def manual_attn_out(clip, blk, o):
    if is_eva(clip):
        return lin(ln(o, blk.attn.norm), blk.attn.proj.weight, blk.attn.proj.bias)
    return lin(o, blk.attn.out_proj.weight, blk.attn.out_proj.bias)


def manual_ffn(clip, blk, x):
    if is_eva(clip):
        m = blk.mlp
        h = ln(x, blk.norm2)
        g = lin(h, m.fc1_g.weight, m.fc1_g.bias)
        hidden = g * torch.sigmoid(g) * lin(h, m.fc1_x.weight, m.fc1_x.bias)  # SwiGLU: silu(gate) * x
        return x + lin(ln(hidden, m.norm), m.fc2.weight, m.fc2.bias)
    m = blk.mlp
    hid = lin(ln(x, blk.ln_2), m.c_fc.weight, m.c_fc.bias)
    hid = 0.5 * hid * (1 + torch.erf(hid / math.sqrt(2)))  # exact GELU
    return x + lin(hid, m.c_proj.weight, m.c_proj.bias)


def manual_head(clip, tokens):
    if is_eva(clip):
        t = clip.visual.trunk
        return lin(ln(tokens, t.norm), t.head.weight, t.head.bias)
    return ln(tokens, clip.visual.ln_post) @ clip.visual.proj


def heads_of(clip):
    return last_block(clip).attn.num_heads


def last_block_input(clip, images):
    """X entering the last block during open_clip's own forward (native input size)."""
    seen = {}
    handle = last_block(clip).register_forward_pre_hook(lambda mod, args: seen.setdefault("x", args[0]))
    with torch.no_grad():
        clip.encode_image(images)
    handle.remove()
    return seen["x"]


def manual_dense(clip, x, mode, scale):
    """The five dense modes of method.md section 2, from X (B, 1+N, D); returns (content (B,N,C), context)."""
    blk, h = last_block(clip), heads_of(clip)
    q, k, v = manual_qkv(clip, blk, x)
    qh, kh, vh = split_heads(q, h), split_heads(k, h), split_heads(v, h)

    def attend(a, b):
        return torch.softmax(torch.einsum("bhnd,bhmd->bhnm", a, b) * scale, dim=-1)

    if mode == "value":
        y = manual_ffn(clip, blk, x + manual_attn_out(clip, blk, v))
        return manual_head(clip, y[:, 1:]), None
    a = {"qq": lambda: attend(qh, qh), "kk": lambda: attend(kh, kh),
         "csa": lambda: attend(qh, qh) + attend(kh, kh)}[mode]()
    out = manual_attn_out(clip, blk, merge_heads(a @ vh))
    return manual_head(clip, out[:, 1:]), (q[:, 1:], k[:, 1:])


def vanilla_reference(clip, images):
    """Patch tokens of the unmodified forward through final norm + head, via open_clip / timm code."""
    with torch.no_grad():
        if is_eva(clip):
            t = clip.visual.trunk
            return t.head(t.forward_features(images)[:, 1:])
        v = copy.deepcopy(clip.visual)
        v.output_tokens = True
        return v(images)[1] @ v.proj


# ---- tests ------------------------------------------------------------------------------------------

# attn_scale only acts on the decoupled modes.
@pytest.mark.parametrize("mode,attn_scale", [(m, "none") for m in MODES] + [(m, "sqrt_d") for m in MODES[2:]])
def test_modes_match_explicit_algebra(clip, mode, attn_scale):
    torch.manual_seed(1)
    images = torch.randn(2, 3, 32, 32)
    dense = DenseCLIP(clip, dense_mode=mode, attn_scale=attn_scale)  # context_proj auto: the mode's own
    with torch.no_grad():
        out = dense(images)
    assert out.content.shape == (2, 16, 4, 4)
    got = out.content.flatten(2).transpose(1, 2)
    if mode == "vanilla":
        ref, ctx = vanilla_reference(clip, images), None
    else:
        x = last_block_input(clip, images)
        scale = 1.0 if attn_scale == "none" else (32 // heads_of(clip)) ** -0.5
        ref, ctx = manual_dense(clip, x, mode, scale)
    torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-4)
    if mode in ("vanilla", "value"):
        assert out.context is None
    elif mode == "csa":
        # csa context: cosine similarity = mean of the Q-Q and K-K cosine similarities (method.md section 2).
        q, k = (F.normalize(z, dim=-1) for z in ctx)
        c = F.normalize(out.context, dim=-1)
        torch.testing.assert_close(c @ c.transpose(1, 2), (q @ q.transpose(1, 2) + k @ k.transpose(1, 2)) / 2,
                                   atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(out.context.norm(dim=-1), torch.ones(2, 16))
    else:  # qq -> Q, kk -> K (DeCLIP eva_vit_model.py ss_attn returns q / k for *_vfm_distill)
        torch.testing.assert_close(out.context, ctx[0] if mode == "qq" else ctx[1], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("proj", ["q", "k", "qk"])
def test_context_projection(clip, proj):
    images = torch.randn(1, 3, 32, 32)
    x = last_block_input(clip, images)
    q, k, _ = manual_qkv(clip, last_block(clip), x)
    with torch.no_grad():
        ctx = DenseCLIP(clip, dense_mode="qq", context_proj=proj)(images).context
    if proj == "q":
        torch.testing.assert_close(ctx, q[:, 1:], atol=1e-5, rtol=1e-4)
    elif proj == "k":
        torch.testing.assert_close(ctx, k[:, 1:], atol=1e-5, rtol=1e-4)
    else:
        assert ctx.shape == (1, 16, 64)
        want = torch.cat([F.normalize(q[:, 1:], dim=-1), F.normalize(k[:, 1:], dim=-1)], -1) / math.sqrt(2)
        torch.testing.assert_close(ctx, want, atol=1e-5, rtol=1e-4)


def test_encode_image_is_open_clip_cls(clip):
    images = torch.randn(3, 3, 32, 32)
    dense = DenseCLIP(clip, dense_mode="qq")
    with torch.no_grad():
        torch.testing.assert_close(dense.encode_image(images), clip.encode_image(images, normalize=True),
                                   atol=1e-6, rtol=1e-5)
    assert dense.embed_dim == 16 and dense.width == 32 and dense.patch_size == 8


def _manual_pos_resize(pos, h, w):
    """(1 + 4*4, D) table -> (1 + h*w, D): bicubic, align_corners=False (CLIPSelf/DeCLIP rescale)."""
    grid = pos[1:].T.reshape(1, -1, 4, 4)
    grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False).reshape(-1, h * w).T
    return torch.cat([pos[:1], grid])


def _resized_reference(clip, images):
    """The normal forward at a non-native input size, built independently of declip.models.dense."""
    h, w = images.shape[-2] // 8, images.shape[-1] // 8
    if is_eva(clip):
        # timm builds the tower for the new size (its RoPE table for the h x w grid); the test resizes pos_embed.
        from timm.models import create_model

        trunk = clip.visual.trunk
        name = "declip_test_tiny_eva" + ("_fused" if trunk.blocks[0].attn.qkv is not None else "")
        ref = create_model(name, num_classes=16, img_size=tuple(images.shape[-2:])).eval()
        sd = dict(trunk.state_dict())
        sd["pos_embed"] = _manual_pos_resize(sd["pos_embed"][0], h, w)[None]
        ref.load_state_dict(sd)
        with torch.no_grad():
            return F.normalize(ref(images), dim=-1)
    ref = copy.deepcopy(clip.visual)
    ref.positional_embedding = torch.nn.Parameter(_manual_pos_resize(ref.positional_embedding.detach(), h, w))
    with torch.no_grad():
        return F.normalize(ref(images), dim=-1)


@pytest.mark.parametrize("size", [(56, 40), (96, 96)])
def test_any_input_size(clip, size):
    images = torch.randn(1, 3, *size)
    dense = DenseCLIP(clip, dense_mode="qq")
    with torch.no_grad():
        out = dense(images)
        cls = dense.encode_image(images)
    h, w = size[0] // 8, size[1] // 8
    assert out.content.shape == (1, 16, h, w)
    assert out.context.shape == (1, h * w, 32)
    torch.testing.assert_close(cls, _resized_reference(clip, images), atol=2e-5, rtol=1e-4)


def test_rope_table_matches_timm_cache():
    rope = tiny_eva().visual.trunk.rope
    torch.testing.assert_close(rope_embed(rope, (4, 4), use_cache=False), rope.get_embed())
    assert rope_embed(rope, (7, 5)).shape == (35, rope.get_embed().shape[-1])


def test_rejects_bad_sizes_and_options(clip):
    with pytest.raises(ValueError, match="multiple of the patch size"):
        DenseCLIP(clip)(torch.randn(1, 3, 30, 32))
    with pytest.raises(UserFacingError, match="dense_mode"):
        DenseCLIP(clip, dense_mode="vv")


def test_autocast_bf16(clip):
    images = torch.randn(1, 3, 48, 32)
    dense = DenseCLIP(clip, dense_mode="csa")
    with torch.no_grad():
        ref = dense(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = dense(images)
    assert low.content.shape == ref.content.shape and low.context.shape == ref.context.shape
    cos = F.cosine_similarity(low.content.float(), ref.content, dim=1)
    assert cos.min() > 0.95


def _param_names(module, prefix):
    return {f"{prefix}.{n}" for n, _ in module.named_parameters()}


def test_freezing_scheme(clip):
    eva = is_eva(clip)
    blocks_name = "visual.trunk.blocks" if eva else "visual.transformer.resblocks"
    all_names = {n for n, _ in clip.named_parameters()}
    last, first = f"{blocks_name}.1", f"{blocks_name}.0"
    blk = last_block(clip)
    ffn = _param_names(blk.mlp, f"{last}.mlp") | _param_names(blk.norm2 if eva else blk.ln_2,
                                                                f"{last}.{'norm2' if eva else 'ln_2'}")
    separate_k = eva and blk.attn.k_proj is not None
    k_names = _param_names(blk.attn.k_proj, f"{last}.attn.k_proj") if separate_k else set()
    q_names = _param_names(blk.attn.q_proj, f"{last}.attn.q_proj") if separate_k else set()
    block_names = {n for n in all_names if n.startswith(blocks_name + ".")}

    trainable = set(set_trainable(clip, None, "qq"))
    assert trainable == block_names - ffn - k_names
    # value (CLIPSelf) reads only V: Q and K (and a fused Eva's separate q bias) are frozen too.
    q_bias = {f"{last}.attn.q_bias"} & all_names if eva and blk.attn.qkv is not None else set()
    assert set(set_trainable(clip, None, "value")) == block_names - q_names - k_names - q_bias
    assert set(set_trainable(clip, None, "kk")) == block_names - ffn - q_names - q_bias
    assert set(set_trainable(clip, None, "qq")) == {n for n, p in clip.named_parameters() if p.requires_grad}
    assert not any(n.startswith("text.") or "logit_scale" in n for n in trainable)

    assert set(set_trainable(clip, 1, "qq", context_proj="k")) == {n for n in block_names if n.startswith(last)} - ffn
    assert set(set_trainable(clip, 1, "kk", context_proj="k")) == {
        n for n in block_names if n.startswith(last)} - ffn - q_names - q_bias
    assert set(set_trainable(clip, 2, "vanilla")) == block_names
    assert not any(n.startswith(first) for n in set_trainable(clip, 1, "csa"))
    with pytest.raises(UserFacingError, match="trainable_blocks"):
        set_trainable(clip, 3, "qq")
    for p in clip.parameters():
        p.requires_grad_(False)


def test_frozen_weights_are_unused_and_trainable_ones_learn(clip):
    """What qq freezes cannot change its output; every trainable weight gets a gradient."""
    model = copy.deepcopy(clip)
    images = torch.randn(2, 3, 32, 32)
    names = set(set_trainable(model, None, "qq"))
    dense = DenseCLIP(model, dense_mode="qq")
    out = dense(images)
    (out.content.square().mean() + out.context.square().mean()).backward()
    for name, p in model.named_parameters():
        if name in names:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    blk = last_block(model)
    frozen = [p for n, p in blk.named_parameters() if n.startswith(("mlp.", "norm2.", "ln_2.", "attn.k_proj."))]
    with torch.no_grad():
        before = dense(images)
        for p in frozen:
            p.add_(1.0)
        after = dense(images)
    torch.testing.assert_close(after.content, before.content)
    torch.testing.assert_close(after.context, before.context)


@pytest.mark.parametrize("mode,proj", [("qq", "q"), ("kk", "k"), ("qq", "qk"), ("csa", "q"), ("value", "q")])
def test_unused_fused_rows_are_the_unread_projection(clip, mode, proj):
    """The rows named for pinning are exactly the unread Q or K rows of a fused tensor: changing them leaves
    the decoupled output alone, and there are none where the tower keeps separate projections."""
    model = copy.deepcopy(clip)
    pins = unused_fused_rows(model, mode, proj)
    fused = last_block(model).attn
    fused = getattr(fused, "in_proj_weight", None) is not None or getattr(fused, "qkv", None) is not None
    if not fused or (mode, proj) not in {("qq", "q"), ("kk", "k"), ("value", "q")}:
        assert pins == []
        return
    width = pins[0][0].shape[0] // 3
    want = {"qq": [slice(width, 2 * width)], "kk": [slice(0, width)], "value": [slice(0, width), slice(width, 2 * width)]}
    assert sorted({(r.start, r.stop) for _, r in pins}) == [(r.start, r.stop) for r in want[mode]]
    dense = DenseCLIP(model, dense_mode=mode, context_proj=proj)
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        before = dense(images)
        for p, rows in pins:
            p[rows] += 1.0
        after = dense(images)
        for p, rows in pins:  # a V row is always read
            p[2 * width] += 1.0
        moved = dense(images)
    torch.testing.assert_close(after.content, before.content)
    if before.context is not None:
        torch.testing.assert_close(after.context, before.context)
    assert not torch.allclose(moved.content, before.content)


def test_grad_checkpointing_gives_the_same_gradients(clip):
    images = torch.randn(1, 3, 32, 32)
    grads = []
    for enable in (False, True):
        model = copy.deepcopy(clip)
        set_trainable(model, None, "qq")
        dense = DenseCLIP(model, dense_mode="qq").train()
        dense.set_grad_checkpointing(enable)
        dense(images).content.sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, msg=name)


# ---- issue 9: upstream rules per tower ---------------------------------------------------------------

def test_auto_options_follow_the_authors_code_per_tower(clip):
    """attn_scale / token norm `auto`: DeCLIP's plain-ViT code scales by 1/sqrt(d) and L2-normalises the
    tokens before pooling; its EVA code does neither; CLIPSelf's value path normalises on both towers."""
    eva = is_eva(clip)
    qq = DenseCLIP(clip, dense_mode="qq")
    assert qq.attn_scale == ("none" if eva else "sqrt_d") and qq.token_norm is (not eva)
    assert DenseCLIP(clip, dense_mode="value").token_norm is True
    assert DenseCLIP(clip, dense_mode="qq", token_norm_before_pool=False).token_norm is False
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        out = qq(images)
    x = last_block_input(clip, images)
    ref, _ = manual_dense(clip, x, "qq", 1.0 if eva else (32 // heads_of(clip)) ** -0.5)
    torch.testing.assert_close(out.content.flatten(2).transpose(1, 2), ref, atol=2e-5, rtol=1e-4)
    pooled = out.pool_map()
    want = F.normalize(out.content, dim=1) if not eva else out.content
    torch.testing.assert_close(pooled, want)


@pytest.mark.parametrize("mode", ["qq", "kk", "csa"])
def test_layer_scale_scales_the_decoupled_output(clip, mode):
    """gamma_1 / ls_1 multiplies the decoupled attention output (DeCLIP forward_without_rcffn, ss_attn)."""
    from open_clip.transformer import LayerScale

    model = copy.deepcopy(clip)
    blk = last_block(model)
    gamma = 0.5 + torch.rand(32, generator=torch.Generator().manual_seed(4))
    if is_eva(model):
        blk.gamma_1 = torch.nn.Parameter(gamma.clone())
    else:
        blk.ls_1 = LayerScale(32, 1.0)
        blk.ls_1.gamma.data.copy_(gamma)
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        got = DenseCLIP(model, dense_mode=mode, attn_scale="none")(images).content.flatten(2).transpose(1, 2)
    x = last_block_input(model, images)
    q, k, v = manual_qkv(model, blk, x)
    h = heads_of(model)
    qh, kh, vh = split_heads(q, h), split_heads(k, h), split_heads(v, h)
    att = {"qq": [qh], "kk": [kh], "csa": [qh, kh]}[mode]
    a = sum(torch.softmax(z @ z.transpose(-1, -2), dim=-1) for z in att)
    out = manual_attn_out(model, blk, merge_heads(a @ vh)) * gamma
    torch.testing.assert_close(got, manual_head(model, out[:, 1:]), atol=2e-5, rtol=1e-4)
