"""EVA-CLIP <-> open_clip checkpoint conversion (declip.models.convert)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from declip.models.clip import create_clip
from declip.models.convert import eva_clip_to_open_clip, open_clip_to_eva_clip

# Block keys of EVA02-CLIP-B/16 as the BAAI EVA-CLIP model code names them (eva_vit_model.py: Attention with
# subln -> q_proj/k_proj/v_proj + q_bias/v_bias, inner_attn_ln; SwiGLU w1/w2/ffn_ln/w3), written out by hand.
EVA_CLIP_BLOCK_KEYS = {
    "norm1.weight", "norm1.bias", "attn.q_proj.weight", "attn.k_proj.weight", "attn.v_proj.weight",
    "attn.q_bias", "attn.v_bias", "attn.inner_attn_ln.weight", "attn.inner_attn_ln.bias",
    "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.w1.weight", "mlp.w1.bias",
    "mlp.w2.weight", "mlp.w2.bias", "mlp.ffn_ln.weight", "mlp.ffn_ln.bias", "mlp.w3.weight", "mlp.w3.bias",
}
EVA_CLIP_TOWER_KEYS = {"visual.cls_token", "visual.pos_embed", "visual.patch_embed.proj.weight",
                       "visual.patch_embed.proj.bias", "visual.norm.weight", "visual.norm.bias",
                       "visual.head.weight", "visual.head.bias"}


@pytest.fixture(scope="module")
def eva02():
    torch.manual_seed(0)
    model = create_clip({"model": "EVA02-B-16"}).eval()
    with torch.no_grad():  # non-zero q/v biases and norm parameters, so a misplaced tensor shows up
        for p in model.parameters():
            if p.ndim <= 1:
                p.add_(0.02 * torch.randn_like(p))
    return model


def test_eva_clip_key_names(eva02):
    eva = open_clip_to_eva_clip(eva02.state_dict())
    block0 = {k[len("visual.blocks.0."):] for k in eva if k.startswith("visual.blocks.0.")}
    assert block0 == EVA_CLIP_BLOCK_KEYS
    assert EVA_CLIP_TOWER_KEYS <= set(eva)
    assert not any(k.startswith("visual.trunk.") for k in eva)
    assert {k for k in eva if k.startswith("text.")} == {k for k in eva02.state_dict() if k.startswith("text.")}


def test_round_trip_tensors_and_outputs(eva02):
    sd = {k: v.clone() for k, v in eva02.state_dict().items()}
    eva = open_clip_to_eva_clip(sd)
    # What a real EVA-CLIP file also holds: persistent RoPE tables, shared by every block's attention.
    eva["visual.rope.freqs_cos"] = torch.randn(196, 64)
    eva["visual.blocks.3.attn.rope.freqs_sin"] = torch.randn(196, 64)
    back = eva_clip_to_open_clip(eva, eva02)
    assert set(back) == set(sd)
    for key, value in sd.items():
        assert torch.equal(back[key], value), key

    # Outputs: wipe the model, load the round-tripped tensors, compare with the outputs from before.
    # (Loading an EVA-CLIP file from disk through load_clip is covered by tests/test_features.py.)
    images = torch.randn(1, 3, 224, 224)
    text = torch.randint(0, 49408, (2, 77))
    with torch.no_grad():
        want_image, want_text = eva02.encode_image(images), eva02.encode_text(text)
        for p in eva02.parameters():
            p.zero_()
    missing, unexpected = eva02.load_state_dict(back, strict=False)
    assert not unexpected and all(k.endswith("attn_mask") for k in missing)
    with torch.no_grad():
        assert torch.equal(eva02.encode_image(images), want_image)
        assert torch.equal(eva02.encode_text(text), want_text)


def _ln(x, w, b, eps=1e-6):
    return F.layer_norm(x, (x.shape[-1],), w, b, eps)


def test_block_semantics_follow_eva_clip(eva02):
    """EVA-CLIP's block math written from its own key names equals timm's block after conversion."""
    e = {k[len("visual.blocks.0."):]: v for k, v in open_clip_to_eva_clip(eva02.state_dict()).items()
         if k.startswith("visual.blocks.0.")}
    x = torch.randn(1, 5, 768)
    heads = 12

    xn = _ln(x, e["norm1.weight"], e["norm1.bias"])
    q = xn @ e["attn.q_proj.weight"].T + e["attn.q_bias"]
    k = xn @ e["attn.k_proj.weight"].T
    v = xn @ e["attn.v_proj.weight"].T + e["attn.v_bias"]
    q, k, v = (z.reshape(1, 5, heads, 64).transpose(1, 2) for z in (q, k, v))
    a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(64), dim=-1)
    o = (a @ v).transpose(1, 2).reshape(1, 5, 768)
    o = _ln(o, e["attn.inner_attn_ln.weight"], e["attn.inner_attn_ln.bias"])
    x1 = x + o @ e["attn.proj.weight"].T + e["attn.proj.bias"]
    h = _ln(x1, e["norm2.weight"], e["norm2.bias"])
    hidden = F.silu(h @ e["mlp.w1.weight"].T + e["mlp.w1.bias"]) * (h @ e["mlp.w2.weight"].T + e["mlp.w2.bias"])
    hidden = _ln(hidden, e["mlp.ffn_ln.weight"], e["mlp.ffn_ln.bias"])
    want = x1 + hidden @ e["mlp.w3.weight"].T + e["mlp.w3.bias"]
    with torch.no_grad():
        got = eva02.visual.trunk.blocks[0](x, rope=None)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


class _Holder(nn.Module):
    """Just enough of an open_clip CLIP (visual.trunk) for the converter, around a tiny timm Eva."""

    def __init__(self, fused: bool, img_size: int = 32):
        from timm.models.eva import Eva

        super().__init__()
        self.visual = nn.Module()
        self.visual.trunk = Eva(img_size=img_size, patch_size=8, embed_dim=32, depth=1, num_heads=4,
                                qkv_fused=fused, mlp_ratio=4 * 2 / 3, swiglu_mlp=True, scale_mlp=True,
                                scale_attn_inner=True, use_rot_pos_emb=True, ref_feat_shape=(4, 4),
                                global_pool="token", num_classes=16).eval()
        with torch.no_grad():
            for p in self.parameters():
                p.add_(0.05 * torch.randn_like(p))


@pytest.mark.parametrize("source_fused,target_fused", [(True, False), (False, True)])
def test_fused_and_separate_qkv(source_fused, target_fused):
    torch.manual_seed(0)
    source, target = _Holder(source_fused), _Holder(target_fused)
    eva = open_clip_to_eva_clip(source.state_dict())
    if source_fused:  # EVA01-style EVA-CLIP attention: one qkv weight, q_bias / v_bias
        assert {"visual.blocks.0.attn.qkv.weight", "visual.blocks.0.attn.q_bias", "visual.blocks.0.attn.v_bias"} <= set(eva)
    converted = eva_clip_to_open_clip(eva, target)
    missing, unexpected = target.load_state_dict(converted, strict=False)
    assert not missing and not unexpected
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(target.visual.trunk(images), source.visual.trunk(images), atol=1e-5, rtol=1e-4)


def test_old_text_layout_and_pos_embed_resize():
    torch.manual_seed(0)
    source, target = _Holder(False, img_size=32), _Holder(False, img_size=48)
    target.text = nn.Module()
    target.text.ln_final = nn.LayerNorm(8)
    eva = open_clip_to_eva_clip(source.state_dict())
    eva["ln_final.weight"], eva["ln_final.bias"] = torch.randn(8), torch.randn(8)
    eva["attn_mask"] = torch.zeros(4, 4)
    converted = eva_clip_to_open_clip(eva, target)
    assert torch.equal(converted["text.ln_final.weight"], eva["ln_final.weight"])
    assert "attn_mask" not in converted
    pos = converted["visual.trunk.pos_embed"]
    assert pos.shape == target.visual.trunk.pos_embed.shape == (1, 1 + 36, 32)
    assert torch.equal(pos[:, 0], eva["visual.pos_embed"][:, 0])
