"""Stable Diffusion self-attention affinity for SD-GSC (journal, method.md section 4).

One noisy UNet forward per image: VAE-encode the letterboxed image at `resolution`, scale the latent by
the VAE scaling factor, add noise at `timestep` with a fixed `noise_seed`, condition on the (empty)
prompt. A custom processor on every `attn1` (self-attention) records the softmax probabilities of the
layers whose map side is >= `min_map_size`, head-averaged at once, both axes resized to the CLIP grid,
rows renormalised, and aggregated over layers (mean, or the journal's chain product). The processor
returns the ordinary attention output, so the UNet forward is unchanged.

OUR CHOICES beyond method.md (documented here and in the schema): the VAE latent is the posterior
MEAN (deterministic); the same noise tensor (seeded) is used for every image, so a result never
depends on batch composition; the chain product multiplies layers in forward order (A_1 A_2 ... A_L);
the tiny (mini preset) model has no text encoder: its conditioning is a fixed seeded N(0,1) embedding
of shape (1, 77, cross_attention_dim) drawn from `noise_seed`.
"""

from __future__ import annotations

import logging
import math

from declip.config import resolve_path
from declip.errors import UserFacingError
from declip.models.vfm import autocast_context, letterbox_batch

log = logging.getLogger(__name__)

TINY_PROMPT_TOKENS = 77  # CLIP text context length, so the tiny conditioning has SD's shape


def resize_matrix(side: int, out: int, device=None, dtype=None):
    """(out, side) weights of the 1-D bilinear antialiased resize side -> out (torch's separable filter)."""
    import torch
    import torch.nn.functional as F

    eye = torch.eye(side, device=device, dtype=torch.float32).view(side, 1, 1, side)
    w = F.interpolate(eye, size=(1, out), mode="bilinear", align_corners=False, antialias=True)
    return w.view(side, out).t().to(dtype or torch.float32)


def resize_affinity(a, side: int, grid: tuple[int, int]):
    """(B,N,N) map on a side x side token grid -> (B,G,G) on `grid`, both axes resized, rows renormalised.

    method.md section 4: query and key axes are resized to the CLIP grid; bilinear with antialiasing
    (a low-pass when downsampling 64/32 -> 35, plain bilinear when upsampling 16 -> 35). The resize is
    separable and linear, so it is applied as small matrices: A' = (Rh x Rw) A (Rh x Rw)^T.
    """
    b = a.shape[0]
    gh, gw = grid
    if (side, side) != (gh, gw):
        rh = resize_matrix(side, gh, a.device, a.dtype)
        rw = resize_matrix(side, gw, a.device, a.dtype)
        x = a.reshape(b, side, side, side, side)  # (query y, query x, key y, key x)
        x = rh @ x @ rw.t()  # key axes -> (B, s, s, gh, gw)
        x = x.reshape(b, side, side, gh * gw).permute(0, 3, 1, 2)  # (B, G_key, s, s) over the query axes
        x = rh @ x @ rw.t()  # query axes -> (B, G_key, gh, gw)
        a = x.reshape(b, gh * gw, gh * gw).transpose(1, 2)  # (B, G_query, G_key)
    a = a.clamp_min(0)
    return a / a.sum(-1, keepdim=True).clamp_min(1e-12)


def sd_gsc(a_self, s_vfm):
    """Journal SD-GSC: S_hat_VFM = A_self x S_VFM (row-stochastic SD affinity times the VFM similarity)."""
    return a_self @ s_vfm.to(a_self.dtype)


class AffinityRecorder:
    """Accumulates head-averaged self-attention maps (resized to the grid) over layers."""

    def __init__(self, min_map_size: int, aggregate: str = "mean"):
        if aggregate not in ("mean", "product"):
            raise UserFacingError(f"teachers.sd.aggregate must be mean or product, not {aggregate!r}")
        self.min_map_size = int(min_map_size)
        self.aggregate = aggregate
        self.grid = None
        self.total = None
        self.count = 0

    def start(self, grid: tuple[int, int]) -> None:
        self.grid, self.total, self.count = tuple(grid), None, 0

    @property
    def active(self) -> bool:
        return self.grid is not None

    def wants(self, n_tokens: int) -> bool:
        return self.active and n_tokens >= self.min_map_size**2

    def add(self, probs_mean, side: int) -> None:
        """One layer's head-averaged (B,N,N) probabilities on a side x side grid."""
        a = resize_affinity(probs_mean.float(), side, self.grid)
        if self.total is None:
            self.total = a
        elif self.aggregate == "mean":
            self.total = self.total + a
        else:  # journal's chain product, in forward order
            self.total = self.total @ a
        self.count += 1

    def finish(self):
        if not self.count:
            raise UserFacingError(
                f"no SD self-attention layer has a map side >= {self.min_map_size} (config key `teachers.sd.min_map_size`); lower it "
                "or raise `teachers.sd.resolution`"
            )
        a = self.total / self.count if self.aggregate == "mean" else self.total
        self.grid, self.total, self.count = None, None, 0
        return a / a.sum(-1, keepdim=True).clamp_min(1e-12)


class CaptureSelfAttnProcessor:
    """attn1 processor: ordinary attention output, plus the head-averaged probabilities to a recorder."""

    def __init__(self, recorder: AffinityRecorder):
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.recorder = recorder
        self.default = AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        import torch

        n_tokens = hidden_states.shape[-2] * hidden_states.shape[-1] if hidden_states.ndim == 4 else hidden_states.shape[1]
        if encoder_hidden_states is not None or not self.recorder.wants(n_tokens):
            return self.default(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)

        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, seq, _ = hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, seq, batch).view(batch, attn.heads, -1, seq)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        def heads(t):
            return t.view(batch, -1, attn.heads, t.shape[-1] // attn.heads).transpose(1, 2)

        query, key, value = heads(attn.to_q(hidden_states)), heads(attn.to_k(hidden_states)), heads(attn.to_v(hidden_states))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        out = torch.empty_like(query)
        maps = query.new_empty((batch, seq, seq), dtype=torch.float32)
        # One image at a time bounds memory (heads x 4096 x 4096 at SD's 64x64 maps).
        for i in range(batch):
            with torch.autocast(query.device.type, enabled=False):
                logits = (query[i].float() @ key[i].float().transpose(-1, -2)) * attn.scale
                if attention_mask is not None:
                    logits = logits + attention_mask[i].float()
                probs = logits.softmax(-1)  # (heads, N, N)
            out[i] = (probs.to(value.dtype) @ value[i]).to(out.dtype)
            torch.mean(probs, 0, out=maps[i])  # heads averaged immediately (method.md section 4)
            del logits, probs
        side = math.isqrt(seq)
        if side * side != seq:
            raise ValueError(f"self-attention over {seq} tokens is not a square map; SD input must be square")
        self.recorder.add(maps, side)

        hidden_states = out.transpose(1, 2).reshape(batch, -1, out.shape[1] * out.shape[-1]).to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def install_capture(unet, recorder: AffinityRecorder) -> int:
    """Put the capture processor on every attn1 (self-attention); other processors are kept. Returns the count."""
    processors = dict(unet.attn_processors)
    names = [k for k in processors if k.endswith("attn1.processor")]
    for k in names:
        processors[k] = CaptureSelfAttnProcessor(recorder)
    unet.set_attn_processor(processors)
    return len(names)


class SDAffinity:
    """Row-stochastic SD self-attention affinity on the CLIP token grid (journal SD-GSC)."""

    def __init__(self, unet, vae, scheduler, prompt_embeds, sd_cfg: dict, precision: str = "fp16"):
        self.unet = unet.eval().requires_grad_(False)
        self.vae = vae.eval().requires_grad_(False)
        self.scheduler = scheduler
        self.prompt_embeds = prompt_embeds
        self.resolution = int(sd_cfg["resolution"])
        self.timestep = int(sd_cfg["timestep"])
        self.noise_seed = int(sd_cfg["noise_seed"])
        self.precision = precision
        self.recorder = AffinityRecorder(sd_cfg["min_map_size"], sd_cfg["aggregate"])
        install_capture(self.unet, self.recorder)
        if self.timestep >= scheduler.config.num_train_timesteps:
            raise UserFacingError(
                f"teachers.sd.timestep {self.timestep} is beyond the scheduler's {scheduler.config.num_train_timesteps} steps"
            )

    @property
    def device(self):
        return next(self.unet.parameters()).device

    def to(self, device):
        self.unet.to(device)
        self.vae.to(device)
        self.prompt_embeds = self.prompt_embeds.to(device)
        return self

    def _noise(self, latent_shape, device):
        import torch

        gen = torch.Generator().manual_seed(self.noise_seed)
        return torch.randn((1, *latent_shape[1:]), generator=gen).to(device)

    def affinity(self, images01, grid: tuple[int, int]):
        """(B, h*w, h*w) float32 row-stochastic affinity for [0,1] images (tensor batch or list)."""
        import torch

        grid = tuple(int(g) for g in grid)
        device = self.device
        x = letterbox_batch(images01, self.resolution).to(device, torch.float32) * 2 - 1  # SD VAE expects [-1, 1]
        with torch.no_grad():
            # VAE in fp32: it is cheap next to the UNet and avoids fp16 overflow in its decoder-free encode.
            latents = self.vae.encode(x).latent_dist.mean * self.vae.config.scaling_factor
            t = torch.full((latents.shape[0],), self.timestep, dtype=torch.long, device=device)
            noise = self._noise(latents.shape, device).expand_as(latents)
            noisy = self.scheduler.add_noise(latents, noise, t)
            cond = self.prompt_embeds.expand(latents.shape[0], -1, -1)
            self.recorder.start(grid)
            try:
                with autocast_context(device, self.precision):
                    self.unet(noisy, t, encoder_hidden_states=cond)
                return self.recorder.finish()
            finally:
                self.recorder.grid = None


def _tiny_sd(sd_cfg: dict, seed: int):
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    tiny = sd_cfg["tiny"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**tiny["unet"])
        vae = AutoencoderKL(**tiny["vae"])
    # SD 2.x training schedule (scaled_linear 0.00085..0.012, 1000 steps) so t means the same noise level.
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    gen = torch.Generator().manual_seed(int(sd_cfg["noise_seed"]))
    embeds = torch.randn((1, TINY_PROMPT_TOKENS, unet.config.cross_attention_dim), generator=gen)
    return unet, vae, scheduler, embeds


def _folder_sd(sd_cfg: dict):
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    path = resolve_path(sd_cfg["checkpoint"])
    if not (path / "unet").is_dir():
        raise UserFacingError(
            f"Stable Diffusion folder {path} has no unet/ (config key `teachers.sd.checkpoint`): run the workflow's download "
            "step, or point the key at a local diffusers folder of SD 2.1 base"
        )
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", local_files_only=True)
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae", local_files_only=True)
    scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler", local_files_only=True)
    tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", local_files_only=True)
    text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", local_files_only=True).eval()
    ids = tokenizer(sd_cfg["prompt"], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        embeds = text_encoder(ids)[0]  # the conditioning the SD pipeline uses (last hidden state)
    return unet, vae, scheduler, embeds


def load_sd(sd_cfg: dict, seed: int, precision: str = "fp16", weights=None) -> SDAffinity:
    """SD self-attention affinity teacher from a local diffusers folder, or the tiny config (with the
    pretrained `weights` file of declip.models.mini_teachers, or seeded random weights)."""
    if sd_cfg.get("tiny"):
        unet, vae, scheduler, embeds = _tiny_sd(sd_cfg, seed)
        if weights is not None:
            from declip.models.mini_teachers import load_weights

            extra = load_weights({"unet": unet, "vae": vae}, weights)
            vae.register_to_config(scaling_factor=float(extra["scaling_factor"]))
            log.info("built tiny SD UNet/VAE with the pretrained weights %s (seeded prompt embedding)", weights)
        else:
            log.info("built tiny SD UNet/VAE with seed %d (random weights, seeded prompt embedding)", seed)
    elif sd_cfg.get("checkpoint"):
        unet, vae, scheduler, embeds = _folder_sd(sd_cfg)
        log.info("loaded Stable Diffusion from %s", sd_cfg["checkpoint"])
    else:
        raise UserFacingError("teachers.sd has neither `checkpoint` nor `tiny`: set `teachers.sd.checkpoint` to a local diffusers folder")
    return SDAffinity(unet, vae, scheduler, embeds, sd_cfg, precision=precision)
