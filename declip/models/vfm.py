"""Vision foundation models (the context teachers): last-layer patch tokens on the student's token grid.

method.md section 1/4: DINOv2 (with or without registers), DINO v1 and the SAM image encoder give the
context teacher's tokens; the VFM sees a letterbox of the same image at grid x patch pixels so that its
token grid equals the CLIP grid cell for cell. Models come from a local Hugging Face folder or, in the
mini preset, from a small config with seeded random weights; nothing is ever downloaded.

SAM: the authors' code (xiaomoguhz/DeCLIP, src/training/declip.py) takes `sam.image_encoder(x)`, i.e.
the NECK output (conv + LayerNorm2d, 256 channels), at grid x 16 px with the absolute positional
embedding bicubically resized. We do the same when `input_size` is null; with a fixed `input_size`
(e.g. SAM's native 1024) the neck grid is bilinearly resized to the CLIP grid instead.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext

from declip.config import resolve_path
from declip.errors import UserFacingError

log = logging.getLogger(__name__)

VFM_TYPES = ("dinov2_reg", "dinov2", "dino", "sam")
PRECISIONS = {"fp16": "float16", "bf16": "bfloat16", "fp32": None}


def letterbox_batch(images01, size: int):
    """(B,3,size,size): a tensor batch or a list of (3,H,W) images of any sizes, each letterboxed."""
    import torch

    from declip.data.images import letterbox

    if isinstance(images01, torch.Tensor):
        return letterbox(images01 if images01.dim() == 4 else images01[None], size)[0]
    return torch.stack([letterbox(img, size)[0] for img in images01])


def autocast_context(device, precision: str):
    """Half-precision autocast on CUDA only (CPU teachers run fp32)."""
    import torch

    dtype = PRECISIONS[precision]
    if device.type != "cuda" or dtype is None:
        return nullcontext()
    return torch.autocast("cuda", dtype=getattr(torch, dtype))


def resize_grid(tokens, grid: tuple[int, int]):
    """(B,h,w,D) -> (B,grid,D), bilinear (method.md section 4: differing grids are resized bilinearly)."""
    import torch.nn.functional as F

    if tuple(tokens.shape[1:3]) == tuple(grid):
        return tokens
    x = F.interpolate(tokens.permute(0, 3, 1, 2), size=tuple(grid), mode="bilinear", align_corners=False)
    return x.permute(0, 2, 3, 1)


def _hf_classes(vfm_type: str):
    import transformers as tf

    if vfm_type == "dinov2_reg":
        return tf.Dinov2WithRegistersConfig, tf.Dinov2WithRegistersModel
    if vfm_type == "dinov2":
        return tf.Dinov2Config, tf.Dinov2Model
    if vfm_type == "dino":
        return tf.ViTConfig, tf.ViTModel
    if vfm_type == "sam":
        return tf.SamVisionConfig, tf.SamVisionModel
    raise UserFacingError(f"unknown VFM type {vfm_type!r} (config key `teachers.vfms.*.type`); allowed: {', '.join(VFM_TYPES)}")


def _build_tiny(spec: dict, seed: int):
    import torch

    config_cls, model_cls = _hf_classes(spec["type"])
    kwargs = dict(spec["tiny"], patch_size=spec["patch_size"])
    if spec["type"] == "sam" and spec.get("input_size"):
        kwargs.setdefault("image_size", spec["input_size"])
    config = config_cls(**kwargs)
    # Seeded init without disturbing the caller's global RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config, add_pooling_layer=False) if spec["type"] == "dino" else model_cls(config)
    return model


def _load_checkpoint(spec: dict, name: str):
    path = resolve_path(spec["checkpoint"])
    if not path.is_dir():
        raise UserFacingError(
            f"VFM checkpoint folder {path} does not exist (config key `teachers.vfms.{name}.checkpoint`): "
            "run the workflow's download step, or point the key at a local Hugging Face folder"
        )
    config_cls, model_cls = _hf_classes(spec["type"])
    if spec["type"] == "dino":
        return model_cls.from_pretrained(path, local_files_only=True, add_pooling_layer=False)
    if spec["type"] == "sam":
        import transformers as tf

        config = tf.AutoConfig.from_pretrained(path, local_files_only=True)
        if getattr(config, "model_type", "") == "sam":
            # A full SamModel folder: keep its image encoder only (prompt encoder / mask decoder unused).
            return tf.SamModel.from_pretrained(path, local_files_only=True).vision_encoder
    return model_cls.from_pretrained(path, local_files_only=True)


class VFM:
    """A frozen VFM; `tokens` gives last-layer patch tokens (after the final norm) on a requested grid."""

    def __init__(self, model, spec: dict, precision: str = "fp16"):
        self.type = spec["type"]
        self.patch_size = int(spec["patch_size"])
        self.input_size = spec.get("input_size")
        self.mean = spec.get("mean", [0.485, 0.456, 0.406])
        self.std = spec.get("std", [0.229, 0.224, 0.225])
        self.precision = precision
        self.model = model.eval().requires_grad_(False)
        self.encoder = getattr(model, "vision_encoder", model)  # SamVisionModel wraps the encoder
        config = self.encoder.config
        self.num_prefix = 1 + (config.num_register_tokens if self.type == "dinov2_reg" else 0)

    @property
    def device(self):
        return next(self.model.parameters()).device

    def to(self, device):
        self.model.to(device)
        return self

    def input_side(self, grid: tuple[int, int]) -> int:
        # method.md section 4: long side = CLIP grid x VFM patch, so the token grids coincide.
        return int(self.input_size) if self.input_size else max(grid) * self.patch_size

    def tokens(self, images01, grid: tuple[int, int]):
        """(B,h,w,D) float32 patch tokens for [0,1] images (a (B,3,H,W) tensor or a list of (3,H,W))."""
        import torch

        from declip.data.images import normalize

        grid = tuple(int(g) for g in grid)
        side = self.input_side(grid)
        x = letterbox_batch(images01, side).to(self.device, torch.float32)
        x = normalize(x, self.mean, self.std)
        with torch.no_grad(), autocast_context(self.device, self.precision):
            feats = self._forward(x)
        return resize_grid(feats.float(), grid)

    def _forward(self, x):
        """(B,h,w,D) last-layer patch tokens of a normalised square input."""
        b, _, side, _ = x.shape
        n = side // self.patch_size
        if self.type == "sam":
            return self._sam_neck(x).permute(0, 2, 3, 1)
        kwargs = {"interpolate_pos_encoding": True} if self.type == "dino" else {}
        hidden = self.model(pixel_values=x, **kwargs).last_hidden_state  # after the final LayerNorm
        patches = hidden[:, self.num_prefix:]  # CLS (and registers) dropped
        return patches.reshape(b, n, n, -1)

    def _sam_neck(self, x):
        enc = self.encoder
        if x.shape[-1] == enc.config.image_size:
            return enc(pixel_values=x).last_hidden_state
        return sam_neck_any_size(enc, x)


def sam_neck_any_size(encoder, x, patch_tokens=None):
    """SAM image-encoder neck output (B,C,h,w) for any input side, pos-embedding resized (authors' code).

    transformers' SamVisionEncoder only accepts its native size; the DeCLIP code feeds grid x 16 px
    with the absolute positional embedding bicubically resized (relative position tables are already
    interpolated by the attention layers, windows are padded). `patch_tokens` (B,h,w,D) replaces the patch
    embedding of x (masked-image pretraining of the mini teacher).
    """
    import torch.nn.functional as F

    h = encoder.patch_embed.projection(x).permute(0, 2, 3, 1) if patch_tokens is None else patch_tokens
    if encoder.pos_embed is not None:
        pos = F.interpolate(encoder.pos_embed.permute(0, 3, 1, 2), size=h.shape[1:3], mode="bicubic", align_corners=False)
        h = h + pos.permute(0, 2, 3, 1).to(h.dtype)
    for layer in encoder.layers:
        h = layer(h)
        h = h[0] if isinstance(h, tuple) else h
    return encoder.neck(h)


def load_vfm(spec: dict, seed: int, precision: str = "fp16", name: str | None = None, weights=None) -> VFM:
    """The VFM of `spec` (= cfg["teachers"]["vfms"][name]): local folder, or tiny config; eval, frozen.
    A tiny model takes the pretrained `weights` file (declip.models.mini_teachers) or, when None, seeded
    random weights."""
    if spec.get("type") not in VFM_TYPES:
        raise UserFacingError(f"VFM {name or spec}: type {spec.get('type')!r} is not one of {', '.join(VFM_TYPES)}")
    if spec.get("tiny"):
        model = _build_tiny(spec, seed)
        if weights is not None:
            from declip.models.mini_teachers import load_weights

            load_weights({"model": model}, weights)
            log.info("built tiny %s VFM %s with its pretrained weights %s", spec["type"], name or "", weights)
        else:
            log.info("built tiny %s VFM %s with seed %d (random weights)", spec["type"], name or "", seed)
    elif spec.get("checkpoint"):
        model = _load_checkpoint(spec, name or "<name>")
        log.info("loaded %s VFM %s from %s", spec["type"], name or "", spec["checkpoint"])
    else:
        raise UserFacingError(
            f"VFM {name or ''} has neither `checkpoint` nor `tiny` (config keys `teachers.vfms.{name or '<name>'}.checkpoint|tiny`): "
            "set `checkpoint` to a local Hugging Face folder"
        )
    return VFM(model, spec, precision=precision)
