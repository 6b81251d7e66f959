"""Class text embeddings: prompt-template ensembles, synonyms, and their on-disk cache.

Ensemble (CLIP / ViLD / CLIPSelf): encode every template filled with the name, L2-normalise each,
average, renormalise. A class may list synonyms separated by '; ' (training-free segmentation papers:
SCLIP, NACLIP, ProxyCLIP); each synonym is its own ensemble ("query") and scoring takes, per class,
the max over its queries (`max_over_synonyms`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from declip.config import resolve_path
from declip.evaluate.templates import TEMPLATE_SETS

log = logging.getLogger(__name__)

SYNONYM_SEP = "; "


def split_synonyms(names: list[str]) -> tuple[list[str], list[int]]:
    """Flatten '; '-separated synonyms into queries and the class index that owns each query."""
    queries, owner = [], []
    for k, name in enumerate(names):
        for q in name.split(SYNONYM_SEP):
            if q.strip():
                queries.append(q.strip())
                owner.append(k)
    return queries, owner


def vild_prompts(name: str) -> list[str]:
    """CLIPSelf's expansion of the 63 ViLD templates (CLIPSelf tools/generate_text_embeddings.py):
    '_' -> ' ', '/' -> ' or ', lower case, trailing '.' dropped; article by the first letter; sentences
    starting with 'a' or 'the' get the prefix 'This is '."""
    processed = name.replace("_", " ").replace("/", " or ").lower().rstrip(".")
    article = "an" if name[:1].lower() in "aeiou" else "a"
    texts = [t.format(processed, article=article) for t in TEMPLATE_SETS["vild"]]
    return ["This is " + t if t.startswith("a") or t.startswith("the") else t for t in texts]


def imagenet_prompts(name: str) -> list[str]:
    """The 80 OpenAI ImageNet templates filled with the name as given (SCLIP / ClearCLIP / NACLIP)."""
    return [t.format(name) for t in TEMPLATE_SETS["imagenet"]]


PROMPT_BUILDERS = {"vild": vild_prompts, "imagenet": imagenet_prompts}


def prompts_for(name: str, template_set) -> list[str]:
    """A named template set ("vild", "imagenet") or an explicit sequence of '{}' templates (e.g. one
    OpenMask3D prompt "a {} in a scene": a one-template ensemble is that prompt's normalised embedding)."""
    if isinstance(template_set, str):
        return PROMPT_BUILDERS[template_set](name)
    return [t.format(name) for t in template_set]


def _templates_of(template_set) -> list[str]:
    return list(TEMPLATE_SETS[template_set]) if isinstance(template_set, str) else list(template_set)


def ensemble_embeddings(clip, tokenize, queries: list[str], template_set, device="cpu",
                        batch_size: int = 1024):
    """(Q, C) float32: per query, mean of the L2-normalised template embeddings, renormalised."""
    import torch
    import torch.nn.functional as F

    prompts = [p for q in queries for p in prompts_for(q, template_set)]
    per_query = len(prompts) // max(len(queries), 1)
    feats = []
    with torch.no_grad():
        for i in range(0, len(prompts), batch_size):
            tokens = tokenize(prompts[i:i + batch_size]).to(device)
            feats.append(F.normalize(clip.encode_text(tokens).float(), dim=-1).cpu())
    feats = torch.cat(feats).view(len(queries), per_query, -1)
    return F.normalize(feats.mean(1), dim=-1)


def max_over_synonyms(scores, owner, num_classes: int, dim: int = -1):
    """Queries -> classes along `dim`: per class, the max over its synonyms' scores (SCLIP's one-hot max)."""
    import torch

    owner = torch.as_tensor(owner, device=scores.device, dtype=torch.long)
    if owner.numel() == num_classes and bool((owner == torch.arange(num_classes, device=owner.device)).all()):
        return scores
    dim = dim % scores.dim()
    view = [1] * scores.dim()
    view[dim] = -1
    out_shape = list(scores.shape)
    out_shape[dim] = num_classes
    out = scores.new_full(out_shape, float("-inf"))
    return out.scatter_reduce(dim, owner.view(view).expand_as(scores), scores, reduce="amax")


def text_tower_digest(clip) -> str:
    """Digest of every tensor of `clip` outside its image tower (`visual.*`): distillation trains only the image
    tower and its weight ensemble keeps frozen tensors bit-identical, so every distilled variant of one CLIP
    shares the original's text embeddings (one encoding per text tower, not per checkpoint)."""
    from declip.models.digest import state_digest

    return state_digest(clip, skip_prefix="visual.")


def cache_key(model_name: str, text_digest: str, queries: list[str], template_set) -> str:
    """<model>-<hash of the text tower's weights, queries, templates>: any change re-encodes."""
    kind = template_set if isinstance(template_set, str) else "explicit"  # named sets expand differently
    payload = json.dumps([text_digest, queries, kind, _templates_of(template_set)])
    safe_model = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_name)
    return f"{safe_model}-{hashlib.sha256(payload.encode()).hexdigest()[:16]}"


def text_embeddings(clip, tokenize, names: list[str], template_set, *, model_name: str,
                    cache_dir: str | Path | None = "cache/text", device="cpu"):
    """Embeddings of every query of `names` (Q, C) and the owner class of each query, cached as .npy."""
    import numpy as np
    import torch

    queries, owner = split_synonyms(names)
    path = None
    if cache_dir is not None:
        path = resolve_path(cache_dir) / f"{cache_key(model_name, text_tower_digest(clip), queries, template_set)}.npy"
        if path.exists():
            emb = torch.from_numpy(np.load(path))
            if emb.shape[0] == len(queries):
                return emb.to(device), owner
    emb = ensemble_embeddings(clip, tokenize, queries, template_set, device=device)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")  # parallel jobs never share a temp file
        np.save(tmp, emb.numpy())
        tmp.replace(path)
        log.info("cached %d text embeddings (%d templates) in %s", len(queries), len(_templates_of(template_set)),
                 path)
    return emb.to(device), owner


def text_cache_dir(cfg: dict) -> Path:
    return resolve_path(cfg.get("paths", {}).get("cache", "cache")) / "text"


# --- the model bundle every evaluation family loads (CLIP, its dense wrapper, its text side) ---------


def resolve_checkpoint(cfg: dict, variant: str, checkpoint: str | None = None) -> Path:
    """--checkpoint, else for a variant that is not trained its own `method.checkpoint` (released weights)
    or the original `student.checkpoint`, else results/distill/<V>/model.pt."""
    if checkpoint:
        return resolve_path(checkpoint)
    method = cfg.get("method", {})
    if variant == "clip":
        return resolve_path(cfg["student"]["checkpoint"])
    if not method.get("train", True):
        return resolve_path(method.get("checkpoint") or cfg["student"]["checkpoint"])
    return resolve_path(cfg.get("paths", {}).get("results", "results")) / "distill" / variant / "model.pt"


class EvalModel:
    """A loaded CLIP with its DenseCLIP wrapper and cached class text embeddings."""

    def __init__(self, clip, dense, tokenize, model_name: str, checkpoint, device, cache_dir):
        self.clip, self.dense, self.tokenize = clip, dense, tokenize
        self.model_name, self.checkpoint, self.device, self.cache_dir = model_name, checkpoint, device, cache_dir

    def text(self, names: list[str], template_set):
        """(Q, C) query embeddings on the device and the owner class of each query; template_set is
        "vild", "imagenet" or a sequence of '{}' templates."""
        return text_embeddings(self.clip, self.tokenize, names, template_set, model_name=self.model_name,
                               cache_dir=self.cache_dir, device=self.device)


def family_dense_mode(cfg: dict, family: str) -> str:
    """`evaluate.<family>.dense_mode` when set (e.g. released segmentation weights run in csa), else the variant's."""
    return cfg.get("evaluate", {}).get(family, {}).get("dense_mode") or cfg["method"]["dense_mode"]


def family_attn_scale(cfg: dict, family: str) -> str:
    """`evaluate.<family>.attn_scale` when set (paper Table 5: released csa weights with 1/sqrt(d)), else the variant's."""
    return cfg.get("evaluate", {}).get(family, {}).get("attn_scale") or cfg["method"].get("attn_scale", "auto")


def checkpoint_format(cfg: dict, variant: str, path: Path) -> str | None:
    """Key layout of a released checkpoint (`method.checkpoint_format`, default `student.checkpoint_format`)
    when `path` is the variant's `method.checkpoint`; None elsewhere, where `load_clip` decides (original
    weights: the student's format; the suite's distilled models: open_clip)."""
    method = cfg.get("method", {})
    if variant != "clip" and not method.get("train", True) and method.get("checkpoint") \
            and resolve_path(method["checkpoint"]) == Path(path):
        return method.get("checkpoint_format") or cfg["student"]["checkpoint_format"]
    return None


def eval_options(cfg: dict, variant: str, model: EvalModel, **extra) -> dict:
    """The options that produced a family's metrics (metrics.json `options`, shown by the tables): where the
    weights come from (`released` = the authors' checkpoint, `distilled` = ours, `original` = the CLIP),
    the resolved dense options, and the family's own (`extra`)."""
    method = cfg.get("method", {})
    if variant == "clip" or (not method.get("train", True) and not method.get("checkpoint")):
        weights = "original"
    else:
        weights = "released" if not method.get("train", True) else "distilled"
    d = model.dense
    return {"weights": weights, "checkpoint": Path(model.checkpoint).name, "dense_mode": d.dense_mode,
            "attn_scale": d.attn_scale, "context_proj": d.context_proj, "token_norm": d.token_norm, **extra}


def load_eval_model(cfg: dict, variant: str, checkpoint: str | None, device, dense_mode: str,
                    attn_scale: str | None = None) -> EvalModel:
    from declip.models.clip import load_clip, tokenizer
    from declip.models.dense import dense_model

    ckpt = resolve_checkpoint(cfg, variant, checkpoint)
    clip = load_clip(cfg["student"], checkpoint=ckpt,
                     checkpoint_format=checkpoint_format(cfg, variant, ckpt)).to(device).eval()
    method = cfg.get("method", {})
    dense = dense_model(clip, method, dense_mode, attn_scale).to(device).eval()
    return EvalModel(clip, dense, tokenizer(cfg["student"]), cfg["student"]["model"], ckpt, device,
                     text_cache_dir(cfg))
