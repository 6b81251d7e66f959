"""Checkpoint conversion between the EVA-CLIP key layout and open_clip's timm-Eva layout.

The authors release EVA-CLIP format (method.md section 1): the BAAI EVA-CLIP model code
(`EVA-CLIP/rei/eva_clip/eva_vit_model.py`) names the image tower `visual.*` with separate
`q_proj/k_proj/v_proj` weights plus `q_bias`/`v_bias` (EVA02, `subln`) or one fused `qkv.weight`
(EVA01), `inner_attn_ln`, SwiGLU `w1/w2/ffn_ln/w3`, persistent RoPE tables `rope.freqs_cos/sin`;
the text tower is open_clip's `text.*` (or, in old-format files, top-level `transformer.*`,
`token_embedding` ...). open_clip's EVA02 models wrap a timm `Eva` trunk under `visual.trunk.*`.

DeCLIP's released checkpoints: EVA-based ones are saved from the authors' vendored EVA-CLIP model, so
they are EVA-CLIP format (possibly wrapped in {"state_dict": ...} with a `module.` prefix, which
`declip.models.clip.load_state_dict` strips); their OpenAI-based ones are open_clip format.
"""

from __future__ import annotations

import logging
import re

log = logging.getLogger(__name__)

# Block-level renames, EVA-CLIP name -> timm Eva name (suffixes after `blocks.N.`).
_BLOCK_RENAMES = (
    ("attn.inner_attn_ln.", "attn.norm."),
    ("mlp.ffn_ln.", "mlp.norm."),
    ("mlp.w12.", "mlp.fc1."),
    ("mlp.w1.", "mlp.fc1_g."),
    ("mlp.w2.", "mlp.fc1_x."),
    ("mlp.w3.", "mlp.fc2."),
)
# Text keys of EVA-CLIP's old (non custom-text) format, which open_clip's CustomTextCLIP keeps under `text.`.
_OLD_TEXT_PREFIXES = ("transformer.", "token_embedding.", "positional_embedding", "ln_final.", "text_projection")
_BLOCK = re.compile(r"^(blocks\.\d+\.)(.*)$")


def _rename(name: str, renames) -> str:
    for old, new in renames:
        if name.startswith(old):
            return new + name[len(old):]
    return name


def _is_derived_buffer(key: str) -> bool:
    """RoPE tables and attention masks are recomputed by the model; EVA-CLIP stores RoPE tables persistently."""
    last = key.rsplit(".", 1)[-1]
    return (".rope." in f".{key}" and last in ("freqs_cos", "freqs_sin", "freqs")) or last == "attn_mask"


def _qkv_target(model_keys: set, block_prefix: str) -> str:
    """Whether the model's block keeps Q/K/V separate (`separate`) or fused (`fused`)."""
    if f"{block_prefix}attn.q_proj.weight" in model_keys:
        return "separate"
    if f"{block_prefix}attn.qkv.weight" in model_keys:
        return "fused"
    return "unknown"


def _convert_attention(items: dict, model_keys: set, out_prefix: str) -> dict:
    """EVA-CLIP attention tensors of one block (keys relative to `attn.`) -> timm Eva tensors."""
    import torch

    target = _qkv_target(model_keys, out_prefix)
    out = {}
    if "qkv.weight" in items and target == "separate":
        for name, w in zip(("q_proj", "k_proj", "v_proj"), items.pop("qkv.weight").chunk(3, dim=0)):
            out[f"attn.{name}.weight"] = w
    if "q_proj.weight" in items and target == "fused":
        out["attn.qkv.weight"] = torch.cat([items.pop(f"{n}_proj.weight") for n in "qkv"], dim=0)
    # timm names the separate biases q_proj.bias / v_proj.bias and the fused ones q_bias / v_bias, as EVA-CLIP.
    if target == "separate":
        for n in ("q", "v"):
            if f"{n}_bias" in items:
                out[f"attn.{n}_proj.bias"] = items.pop(f"{n}_bias")
    for name, value in items.items():
        out[f"attn.{name}"] = value
    return out


def eva_clip_to_open_clip(state_dict: dict, model) -> dict:
    """EVA-CLIP checkpoint keys -> the open_clip (timm Eva trunk + text) layout of `model`.

    Keys the converter does not know are passed through unchanged, so `load_state_dict` reports them.
    """
    from timm.layers import resample_abs_pos_embed

    model_sd = model.state_dict()
    model_keys = set(model_sd)
    has_text_prefix = any(k.startswith("text.") for k in model_keys)
    out: dict = {}
    attn: dict[str, dict] = {}
    for key, value in state_dict.items():
        if _is_derived_buffer(key):
            continue
        if key.startswith("visual."):
            rest = key[len("visual."):]
            if rest.startswith("trunk."):  # already open_clip layout
                out[key] = value
                continue
            m = _BLOCK.match(rest)
            if m:
                block, inner = m.groups()
                if inner.startswith("attn.") and not inner.startswith("attn.inner_attn_ln."):
                    attn.setdefault(block, {})[inner[len("attn."):]] = value
                    continue
                rest = block + _rename(inner, _BLOCK_RENAMES)
            out["visual.trunk." + rest] = value
        elif has_text_prefix and key.startswith(_OLD_TEXT_PREFIXES):
            out["text." + key] = value
        else:
            out[key] = value
    for block, items in attn.items():
        prefix = "visual.trunk." + block
        for name, value in _convert_attention(dict(items), model_keys, prefix).items():
            out[prefix + name] = value

    pos_key = "visual.trunk.pos_embed"
    if pos_key in out and pos_key in model_sd and out[pos_key].shape != model_sd[pos_key].shape:
        # A checkpoint trained at another resolution (e.g. 224 weights into a 336 tower): bicubic resize.
        n_prefix = model.visual.trunk.num_prefix_tokens
        old_side = int(round((out[pos_key].shape[1] - n_prefix) ** 0.5))
        new_grid = list(model.visual.trunk.patch_embed.grid_size)
        log.info("resizing EVA-CLIP pos_embed from %dx%d to %s", old_side, old_side, new_grid)
        out[pos_key] = resample_abs_pos_embed(out[pos_key].float(), new_size=new_grid, old_size=[old_side, old_side],
                                              num_prefix_tokens=n_prefix, antialias=False).to(out[pos_key].dtype)
    if "logit_scale" in out and "logit_scale" in model_sd:
        out["logit_scale"] = out["logit_scale"].reshape(model_sd["logit_scale"].shape)
    return out


def open_clip_to_eva_clip(state_dict: dict) -> dict:
    """open_clip EVA02 layout -> EVA-CLIP keys (separate q/k/v with `q_bias`/`v_bias`, as EVA02-CLIP ships).

    RoPE tables are not written (EVA-CLIP recomputes them on load); the text tower keeps its `text.` keys.
    """
    out = {}
    for key, value in state_dict.items():
        if not key.startswith("visual.trunk."):
            out[key] = value
            continue
        rest = key[len("visual.trunk."):]
        m = _BLOCK.match(rest)
        if m:
            block, inner = m.groups()
            inner = _rename(inner, [(new, old) for old, new in _BLOCK_RENAMES])
            for n in ("q", "v"):
                if inner == f"attn.{n}_proj.bias":
                    inner = f"attn.{n}_bias"
            rest = block + inner
        out["visual." + rest] = value
    return out
