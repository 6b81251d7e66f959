"""A cost-aggregation segmentation head in the spirit of CAT-Seg (protocols.md section 4).

Our own implementation of the architecture of CAT-Seg (Cho et al., CVPR 2024; github KU-CVLAB/CAT-Seg,
cat_seg/modeling/transformer/model.py, class `Aggregator` l.558-724), sized by `evaluate.ovss.head`:

1. Cost volume (model.py l.648-652): cosine of every L2-normalised dense token with every class text
   embedding, one channel per prompt template: (B, P, T, h, w). When there are more classes than
   `pad_len`, only the `pad_len` classes with the highest max cost enter the head; the others get
   logit -100 (l.693-701, l.720-723).
2. Embedding (l.613, l.654-659): a 7x7 conv over the P prompt channels of each class's cost map.
3. `num_layers` x [spatial aggregation: two Swin blocks (window, then shifted window) per class whose
   queries/keys see the projected dense features (appearance guidance, l.228-253, l.65-114); class
   aggregation: a (linear-attention) transformer over the class axis per pixel, keys/queries guided by
   the projected text embeddings, padded with learnt tokens to `pad_len` classes, on an average-pooled
   grid (l.357-424)].
4. Upsampling decoder (l.520-555, l.674-681): two [transposed conv x2, concat guidance from
   intermediate CLIP layers, double conv + GroupNorm] stages and a 3x3 conv to one logit per class.
   The intermediate layers are first upsampled by transposed convs x2 and x4 (cat_seg_model.py l.80-82,
   l.151-157).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from declip.errors import UserFacingError


def cost_volume(img: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) dense features x (T, P, C) or (B, T, P, C) text -> (B, P, T, h, w) cosine costs."""
    img = F.normalize(img, dim=1)
    text = F.normalize(text, dim=-1)
    if text.dim() == 3:
        return torch.einsum("bchw,tpc->bpthw", img, text)
    return torch.einsum("bchw,btpc->bpthw", img, text)


def _windows(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(N, H, W, C) -> (N * H/ws * W/ws, ws*ws, C)."""
    n, h, w, c = x.shape
    x = x.view(n, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def _unwindows(x: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    n = x.shape[0] // ((h // ws) * (w // ws))
    x = x.view(n, h // ws, w // ws, ws, ws, -1).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(n, h, w, -1)


def shift_mask(h: int, w: int, ws: int, shift: int) -> torch.Tensor:
    """(n_windows, ws*ws, ws*ws) additive mask of a cyclically shifted window (Swin; CAT-Seg uses -100)."""
    region = torch.zeros(1, h, w, 1)
    cnt = 0
    for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
        for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            region[:, hs, wsl, :] = cnt
            cnt += 1
    win = _windows(region, ws).squeeze(-1)
    diff = win[:, None, :] - win[:, :, None]
    return diff.ne(0).float() * -100.0


class GuidedWindowBlock(nn.Module):
    """Pre-norm Swin block whose query/key projections also read a guidance vector per token."""

    def __init__(self, dim: int, guide: int, heads: int, grid: tuple[int, int], window: int, shift: int):
        super().__init__()
        self.grid = grid
        self.window = min(window, *grid)  # a window larger than the grid covers it whole, unshifted
        self.shift = 0 if min(grid) <= window else shift
        if grid[0] % self.window or grid[1] % self.window:
            raise UserFacingError(f"evaluate.ovss.head.window_size {window} must divide the feature grid {grid}")
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.q = nn.Linear(dim + guide, dim)
        self.k = nn.Linear(dim + guide, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        mask = shift_mask(*grid, self.window, self.shift) if self.shift else None
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor, guide: torch.Tensor | None) -> torch.Tensor:
        """x (N, H*W, C), guide (N, H*W, G) or None."""
        h, w = self.grid
        n, _, c = x.shape
        y = self.norm1(x).view(n, h, w, c)
        if guide is not None:
            y = torch.cat([y, guide.view(n, h, w, -1)], dim=-1)
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        win = _windows(y, self.window)  # (N*nw, L, C+G)
        bw, L, _ = win.shape
        split = lambda t: t.view(bw, L, self.heads, -1).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(win)), split(self.k(win)), split(self.v(win[..., :c]))
        attn = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
        if self.mask is not None:
            nw = self.mask.shape[0]
            attn = (attn.view(bw // nw, nw, self.heads, L, L) + self.mask[None, :, None]).view(bw, self.heads, L, L)
        o = (attn.softmax(-1) @ v).transpose(1, 2).reshape(bw, L, c)
        o = _unwindows(self.proj(o), self.window, h, w)
        if self.shift:
            o = torch.roll(o, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + o.reshape(n, h * w, c)
        return x + self.mlp(self.norm2(x))


def linear_attention(q, k, v, eps: float = 1e-6):
    """Katharopoulos et al. linear attention with elu+1 features; q (N, L, H, D), k/v (N, S, H, D)."""
    q, k = F.elu(q) + 1, F.elu(k) + 1
    s = v.shape[1]
    kv = torch.einsum("nshd,nshv->nhdv", k, v / s)
    z = 1.0 / (torch.einsum("nlhd,nhd->nlh", q, k.sum(1)) + eps)
    return torch.einsum("nlhd,nhdv,nlh->nlhv", q, kv, z) * s


def full_attention(q, k, v):
    a = torch.einsum("nlhd,nshd->nlsh", q, k) / q.shape[-1] ** 0.5
    return torch.einsum("nlsh,nshd->nlhd", a.softmax(2), v)


class ClassAggregation(nn.Module):
    """Transformer over the class axis at each (pooled) pixel, text-guided, padded to `pad_len` classes."""

    def __init__(self, dim: int, guide: int, heads: int, attention: str, pad_len: int):
        super().__init__()
        self.heads, self.pad_len = heads, pad_len
        self.attend = linear_attention if attention == "linear" else full_attention
        self.q = nn.Linear(dim + guide, dim)
        self.k = nn.Linear(dim + guide, dim)
        self.v = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.ReLU(), nn.Linear(4 * dim, dim))
        self.pad_tokens = nn.Parameter(torch.zeros(1, 1, dim)) if pad_len > 0 else None
        self.pad_guide = nn.Parameter(torch.zeros(1, 1, guide)) if pad_len > 0 and guide > 0 else None

    def forward(self, x: torch.Tensor, guide: torch.Tensor | None, pool: tuple[int, int]) -> torch.Tensor:
        """x (B, C, T, H, W), guide (B, T, G) or None -> (B, C, T, H, W)."""
        b, c, t, h, w = x.shape
        xp = F.avg_pool2d(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w), pool) if pool != (1, 1) else \
            x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        hp, wp = xp.shape[-2:]
        xp = xp.view(b, t, c, hp, wp).permute(0, 3, 4, 1, 2).reshape(b * hp * wp, t, c)
        pad = self.pad_len - t if self.pad_tokens is not None and t < self.pad_len else 0
        if pad:
            xp = torch.cat([xp, self.pad_tokens.expand(xp.shape[0], pad, c)], dim=1)
        g = None
        if guide is not None:
            if pad and self.pad_guide is not None:
                guide = torch.cat([guide, self.pad_guide.expand(b, pad, -1)], dim=1)
            g = guide[:, None].expand(b, hp * wp, *guide.shape[1:]).reshape(b * hp * wp, guide.shape[1], -1)
        y = self.norm1(xp)
        qk_in = torch.cat([y, g], dim=-1) if g is not None else y
        split = lambda z: z.view(z.shape[0], z.shape[1], self.heads, -1)  # noqa: E731
        o = self.attend(split(self.q(qk_in)), split(self.k(qk_in)), split(self.v(y)))
        xp = xp + o.reshape(xp.shape)
        xp = xp + self.mlp(self.norm2(xp))
        xp = xp[:, :t].reshape(b, hp, wp, t, c).permute(0, 3, 4, 1, 2).reshape(b * t, c, hp, wp)
        xp = F.interpolate(xp, size=(h, w), mode="bilinear", align_corners=True)
        return x + xp.view(b, t, c, h, w).permute(0, 2, 1, 3, 4)


class Up(nn.Module):
    """Transposed conv x2 to (in - guide) channels, concat guidance, two 3x3 conv + GroupNorm + ReLU."""

    def __init__(self, cin: int, cout: int, guide: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cin - guide, kernel_size=2, stride=2)
        groups = max(1, cout // 16)
        self.conv = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.GroupNorm(groups, cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.GroupNorm(groups, cout), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor, guide: torch.Tensor | None) -> torch.Tensor:
        x = self.up(x)
        if guide is not None:
            x = torch.cat([x, guide.repeat_interleave(x.shape[0] // guide.shape[0], dim=0)], dim=1)
        return self.conv(x)


class CostAggregationHead(nn.Module):
    """Cost volume -> spatial/class aggregation -> upsampling decoder: one logit map per class at 4x the grid.

    embed_dim: C of the dense map and text embeddings; width: D of the intermediate CLIP layers;
    prompts: P (templates per class); grid: the token grid (h, w) at the training resolution; hp: the
    `evaluate.ovss.head` config section.
    """

    def __init__(self, embed_dim: int, width: int, prompts: int, grid: tuple[int, int], hp: dict):
        super().__init__()
        hid, heads = hp["hidden_dim"], hp["num_heads"]
        tg, ag = hp["text_guidance_dim"], hp["appearance_guidance_dim"]
        dec, dec_g, dec_gp = hp["decoder_dims"], hp["decoder_guidance_dims"], hp["decoder_guidance_proj_dims"]
        self.pad_len = hp["pad_len"]
        self.grid = tuple(grid)
        self.embed = nn.Conv2d(prompts, hid, kernel_size=7, padding=3)
        self.appearance = nn.Sequential(nn.Conv2d(embed_dim, ag, 3, padding=1), nn.ReLU())
        self.text_guidance = nn.Sequential(nn.Linear(embed_dim, tg), nn.ReLU())
        self.spatial = nn.ModuleList()
        self.classes = nn.ModuleList()
        self.guide_norm = nn.ModuleList()
        for _ in range(hp["num_layers"]):
            self.spatial.append(nn.ModuleList([
                GuidedWindowBlock(hid, ag, heads, self.grid, hp["window_size"], 0),
                GuidedWindowBlock(hid, ag, heads, self.grid, hp["window_size"], hp["window_size"] // 2)]))
            self.guide_norm.append(nn.LayerNorm(ag))
            self.classes.append(ClassAggregation(hid, tg, heads, hp["attention"], self.pad_len))
        # Intermediate layers -> decoder guidance: x2 and x4 transposed convs, then 3x3 conv + ReLU.
        self.lift = nn.ModuleList([nn.ConvTranspose2d(width, dec_g[0], 2, stride=2),
                                   nn.ConvTranspose2d(width, dec_g[1], 4, stride=4)])
        self.dec_proj = nn.ModuleList([nn.Sequential(nn.Conv2d(d, p, 3, padding=1), nn.ReLU())
                                       for d, p in zip(dec_g, dec_gp)])
        self.up1 = Up(hid, dec[0], dec_gp[0])
        self.up2 = Up(dec[0], dec[1], dec_gp[1])
        self.out = nn.Conv2d(dec[1], 1, 3, padding=1)

    def forward(self, img: torch.Tensor, text: torch.Tensor, layers: list[torch.Tensor],
                pool: tuple[int, int] = (1, 1)) -> torch.Tensor:
        """img (B, C, h, w) dense map; text (T, P, C) class x template embeddings; layers: two (B, D, h, w)
        intermediate maps; pool: class-aggregation pooling. Returns (B, T, 4h, 4w) logits."""
        b = img.shape[0]
        if tuple(img.shape[-2:]) != self.grid:
            raise UserFacingError(f"the head was built for a {self.grid} token grid, got {tuple(img.shape[-2:])}: "
                                  "feed the CLIP tower at evaluate.ovss.clip_resolution")
        cost = cost_volume(img, text)  # (B, P, T, h, w)
        t_all = cost.shape[2]
        keep = None
        textb = F.normalize(text, dim=-1)[None].expand(b, *text.shape)
        if self.pad_len > 0 and t_all > self.pad_len:
            keep = cost.permute(0, 2, 1, 3, 4).flatten(2).max(-1).values.topk(self.pad_len, dim=-1, sorted=False)[1]
            textb = torch.gather(textb, 1, keep[..., None, None].expand(-1, -1, *text.shape[1:]))
            cost = cost_volume(img, textb)
        _, p, t, h, w = cost.shape
        x = self.embed(cost.permute(0, 2, 1, 3, 4).reshape(b * t, p, h, w))
        x = x.view(b, t, -1, h, w).permute(0, 2, 1, 3, 4)  # (B, hid, T, h, w)
        app = self.appearance(img)  # (B, ag, h, w)
        tguide = self.text_guidance(F.normalize(textb.mean(-2), dim=-1))  # (B, T, tg)
        for (blk1, blk2), norm, cls in zip(self.spatial, self.guide_norm, self.classes):
            c = x.shape[1]
            seq = x.permute(0, 2, 3, 4, 1).reshape(b * t, h * w, c)
            g = norm(app.flatten(2).transpose(1, 2)).repeat_interleave(t, dim=0)
            seq = blk2(blk1(seq, g), g)
            x = seq.view(b, t, h, w, c).permute(0, 4, 1, 2, 3)
            x = cls(x, tguide, tuple(pool))
        guides = [proj(lift(layer)) for lift, proj, layer in zip(self.lift, self.dec_proj, layers)]
        y = x.permute(0, 2, 1, 3, 4).reshape(b * t, -1, h, w)
        y = self.out(self.up2(self.up1(y, guides[0]), guides[1]))
        logits = y.view(b, t, *y.shape[-2:])
        if keep is not None:
            full = logits.new_full((b, t_all, *logits.shape[-2:]), -100.0)
            logits = full.scatter(1, keep[..., None, None].expand(-1, -1, *logits.shape[-2:]), logits)
        return logits


def catseg_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255, loss: str = "bce",
                ignore: str = "negative") -> torch.Tensor:
    """Per-pixel loss at the label resolution (logits bilinearly upsampled, cat_seg_model.py l.160-173).

    bce (CAT-Seg): binary cross-entropy of every class logit against the one-hot label, averaged over all
    pixels x classes; `ignore: negative` keeps ignored pixels as all-negative targets (as CAT-Seg does),
    `exclude` drops them. ce: softmax cross-entropy over the classes, ignored pixels dropped."""
    logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    if loss == "ce":
        return F.cross_entropy(logits, target.long(), ignore_index=ignore_index)
    valid = target != ignore_index
    onehot = torch.zeros_like(logits)
    onehot.scatter_(1, torch.where(valid, target, 0).long()[:, None], 1.0)
    onehot = onehot * valid[:, None]
    per = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
    if ignore == "exclude":
        m = valid[:, None].expand_as(per)
        return per[m].mean() if m.any() else per.sum() * 0.0
    return per.mean()
