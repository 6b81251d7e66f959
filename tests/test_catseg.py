"""OVSS head (declip.models.catseg) and its training/inference helpers (declip.evaluate.ovss*)."""

import math
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from declip.models import catseg as C

HP = {"hidden_dim": 16, "num_layers": 1, "num_heads": 2, "window_size": 4, "attention": "linear",
      "pooling_train": [2, 2], "pad_len": 8, "text_guidance_dim": 8, "appearance_guidance_dim": 8,
      "decoder_dims": [16, 16], "decoder_guidance_dims": [12, 8], "decoder_guidance_proj_dims": [8, 4],
      "guidance_layers": [0, 1]}


def _inputs(b=2, c=12, d=20, t=5, p=3, g=8, seed=0):
    torch.manual_seed(seed)
    return torch.randn(b, c, g, g), torch.randn(t, p, c), [torch.randn(b, d, g, g) for _ in range(2)]


def test_cost_volume_is_the_explicit_cosine():
    img, text, _ = _inputs()
    got = C.cost_volume(img, text)
    b, c, h, w = img.shape
    t, p, _ = text.shape
    want = torch.empty(b, p, t, h, w)
    for bi in range(b):
        for pi in range(p):
            for ti in range(t):
                for y in range(h):
                    for x in range(w):
                        u, v = img[bi, :, y, x], text[ti, pi]
                        want[bi, pi, ti, y, x] = (u @ v) / (u.norm() * v.norm())
    assert got.shape == (b, p, t, h, w)
    assert torch.allclose(got, want, atol=1e-5)
    # per-image text (B, T, P, C) gives the same volume when every image has the same text
    assert torch.allclose(C.cost_volume(img, text[None].expand(b, -1, -1, -1)), want, atol=1e-5)


@pytest.mark.parametrize("attention", ["linear", "full"])
def test_head_shapes(attention):
    img, text, layers = _inputs()
    head = C.CostAggregationHead(12, 20, 3, (8, 8), {**HP, "attention": attention})
    out = head(img, text, layers, pool=(2, 2))
    assert out.shape == (2, 5, 32, 32)  # one logit map per class at 4x the token grid
    assert torch.isfinite(out).all()
    out1 = head(img, text[:4], layers)  # any vocabulary size at test time
    assert out1.shape == (2, 4, 32, 32)


def test_more_classes_than_pad_len_keeps_the_top_costs():
    img, text, layers = _inputs(t=11)
    head = C.CostAggregationHead(12, 20, 3, (8, 8), HP)  # pad_len 8 < 11 classes
    out = head(img, text, layers)
    cost = C.cost_volume(img, text).permute(0, 2, 1, 3, 4).flatten(2).max(-1).values  # (B, T)
    for b in range(2):
        dropped = set(range(11)) - set(cost[b].topk(8).indices.tolist())
        assert len(dropped) == 3
        for t in range(11):
            assert bool((out[b, t] == -100).all()) == (t in dropped)


def test_shift_mask_separates_wrapped_regions():
    m = C.shift_mask(8, 8, 4, 2)
    assert m.shape == (4, 16, 16)
    assert (m[0] == 0).all()  # the top-left window holds one region only
    # bottom-right window: 4 regions of 2x2 tokens; tokens (0,0) and (0,2) of that window differ
    assert m[3, 0, 2] == -100 and m[3, 0, 1] == 0


def test_linear_attention_matches_its_formula():
    torch.manual_seed(1)
    q, k, v = torch.randn(2, 3, 2, 4), torch.randn(2, 5, 2, 4), torch.randn(2, 5, 2, 4)
    got = C.linear_attention(q, k, v)
    phi = lambda x: F.elu(x) + 1  # noqa: E731
    want = torch.empty_like(got)
    for n in range(2):
        for h in range(2):
            for i in range(3):
                w = torch.stack([phi(q[n, i, h]) @ phi(k[n, j, h]) for j in range(5)])
                want[n, i, h] = (w[:, None] * v[n, :, h]).sum(0) / w.sum()
    assert torch.allclose(got, want, atol=1e-4)


def test_bce_loss_against_a_hand_computation():
    logits = torch.tensor([[[[2.0]], [[-1.0]]]])  # (1, 2 classes, 1, 1)
    target = torch.tensor([[[1, 255]]])  # upsampled logits cover two pixels: class 1, ignore
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    bce = lambda z, y: -(y * math.log(sig(z)) + (1 - y) * math.log(1 - sig(z)))  # noqa: E731
    pix1 = [bce(2.0, 0), bce(-1.0, 1)]
    pix2 = [bce(2.0, 0), bce(-1.0, 0)]  # ignored pixel: all-negative target (CAT-Seg)
    neg = C.catseg_loss(logits, target, loss="bce", ignore="negative")
    exc = C.catseg_loss(logits, target, loss="bce", ignore="exclude")
    assert neg.item() == pytest.approx(sum(pix1 + pix2) / 4, rel=1e-5)
    assert exc.item() == pytest.approx(sum(pix1) / 2, rel=1e-5)


def test_a_few_training_steps_lower_the_loss():
    torch.manual_seed(0)
    img, text, layers = _inputs(b=2, t=4)
    labels = C.cost_volume(img, text).mean(1).argmax(1)  # (B, 8, 8): the best-matching class per token
    labels = F.interpolate(labels[:, None].float(), size=(32, 32), mode="nearest")[:, 0].long()
    head = C.CostAggregationHead(12, 20, 3, (8, 8), {**HP, "pad_len": 0})
    opt = torch.optim.AdamW(head.parameters(), lr=5e-3)
    losses = []
    for _ in range(10):
        loss = C.catseg_loss(head(img, text, layers, pool=(2, 2)), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0] and np.mean(losses[-3:]) < np.mean(losses[:3])


def _tiny_clip():
    from declip.config import load
    from declip.models.clip import create_clip

    cfg = load()
    return create_clip(cfg["student"])


def test_attention_finetune_trains_only_q_and_v_rows():
    from declip.evaluate.ovss_train import set_finetune

    clip = _tiny_clip()
    before = {n: p.detach().clone() for n, p in clip.named_parameters()}
    pinned = set_finetune(clip, "attention")
    trainable = [n for n, p in clip.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith("attn.in_proj_weight") for n in trainable)
    assert any(n.startswith("visual.") for n in trainable) and any(not n.startswith("visual.") for n in trainable)
    opt = torch.optim.AdamW([p for p in clip.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    x = torch.randn(2, 3, 64, 64)
    tok = torch.randint(1, 100, (2, 32))  # the tiny CLIP's context length
    (clip.encode_image(x).sum() + clip.encode_text(tok).sum()).backward()
    opt.step()
    with torch.no_grad():
        for w, rows, orig in pinned:
            w[rows] = orig
    for n, p in clip.named_parameters():
        if n.endswith("attn.in_proj_weight"):
            d = p.shape[0] // 3
            assert torch.equal(p[d:2 * d], before[n][d:2 * d])  # keys fixed
            assert not torch.equal(p[:d], before[n][:d]) or not torch.equal(p[2 * d:], before[n][2 * d:])
        else:
            assert torch.equal(p, before[n]), n


class _FakeModel:
    """logits = a fixed linear function of the view's pixels, resized to a 4x4 grid (one class)."""

    device = torch.device("cpu")

    def logits(self, x, text, pool=(1, 1)):
        return F.interpolate(x[:, :1] * 4 - 2, size=(4, 4), mode="bilinear", align_corners=False)


def test_sliding_window_scores_match_an_explicit_average():
    from declip.evaluate.ovss import slide_scores

    torch.manual_seed(0)
    img = torch.rand(3, 10, 14)
    s = {"inference": "slide", "kernel": 6, "out_res": 10, "overlap": 0.333}
    got = slide_scores(_FakeModel(), img, None, s)
    big = F.interpolate(img[None], size=(10, 10), mode="bilinear", align_corners=False)
    stride = int(6 * (1 - 0.333))  # 4: windows at 0 and 4
    total, count = torch.zeros(1, 10, 10), torch.zeros(1, 10, 10)
    m = _FakeModel()
    for y in (0, 4):
        for x in (0, 4):
            view = big[..., y:y + 6, x:x + 6]
            sc = F.interpolate(m.logits(view, None), size=(6, 6), mode="bilinear", align_corners=False).sigmoid()[0]
            total[:, y:y + 6, x:x + 6] += sc
            count[:, y:y + 6, x:x + 6] += 1
    assert stride == 4
    glob = F.interpolate(img[None], size=(6, 6), mode="bilinear", align_corners=False)
    g = F.interpolate(F.interpolate(m.logits(glob, None), size=(6, 6), mode="bilinear", align_corners=False)
                      .sigmoid(), size=(10, 10), mode="bilinear", align_corners=False)[0]
    want = F.interpolate(((total / count + g) / 2)[None], size=(10, 14), mode="bilinear", align_corners=False)[0]
    assert got.shape == (1, 10, 14)
    assert torch.allclose(got, want, atol=1e-6)


def test_background_proxies_and_vocabulary_split():
    from declip.evaluate.ovss import split_vocabulary, subset_miou, to_labels

    pred = torch.tensor([0, 19, 20, 58])
    assert to_labels(pred, 20).tolist() == [1, 20, 0, 0]  # VOC-b: prompts >= 20 are background
    assert to_labels(pred, None) is pred
    assert split_vocabulary(["a", "b", "c"], ["b"]) == ([0, 2], [1])
    with pytest.raises(Exception, match="not classes"):
        split_vocabulary(["a"], ["z"])
    assert subset_miou({"a": 50.0, "b": None, "c": 10.0}, ["a", "b", "c"]) == 30.0
    assert subset_miou({"a": None}, ["a"]) is None


def test_training_vocabulary_ignores_unseen_pixels():
    from declip.config import load
    from declip.evaluate.ovss_train import training_vocabulary

    cfg = load()
    names, lut = training_vocabulary(cfg, cfg["datasets"]["mini2d"], "mini2d")
    unseen = cfg["evaluate"]["ovss"]["unseen_classes"]
    assert unseen and not set(unseen) & set(names) and len(names) == 15 - len(unseen)
    from declip.data.semseg import CLASS_PROMPTS

    full = list(CLASS_PROMPTS["mini2d"])
    for i, n in enumerate(full):
        assert lut[i] == (255 if n in unseen else names.index(n))
    assert lut[255] == 255


def test_ovss_loss_lr_schedule_is_cosine_without_warmup():
    from declip.evaluate.ovss_train import lr_factor

    assert lr_factor(0, 100) == 1.0
    assert lr_factor(50, 100) == pytest.approx(0.5)
    assert lr_factor(100, 100) == pytest.approx(0.0)


def test_dense_taps_give_the_guidance_layers():
    """OvssModel.logits feeds the head the outputs of evaluate.ovss.head.guidance_layers."""
    from declip.config import load
    from declip.evaluate.ovss import OvssModel
    from declip.models.clip import create_clip, tokenizer

    cfg = load()
    clip = create_clip(cfg["student"])
    m = OvssModel(cfg, clip, tokenizer(cfg["student"]), torch.device("cpu"), "qq")
    seen = {}
    m.head.forward = lambda img, text, layers, pool=(1, 1): seen.update(img=img, layers=layers) or img[:, :1]
    x = torch.rand(2, 3, 96, 96)
    m.logits(x, None)
    assert [tuple(t.shape) for t in seen["layers"]] == [(2, 128, 12, 12)] * 2
    assert seen["img"].shape == (2, 64, 12, 12)
    # the taps are the block outputs: rerun the blocks by hand
    from declip.data.images import normalize

    tw = m.dense._tower
    h, _, _ = tw.embed(normalize(x, cfg["student"]["mean"], cfg["student"]["std"]))
    outs = []
    for blk in tw.blocks[:3]:
        h = tw.run_block(blk, h, None)
        outs.append(h)
    for i, t in zip(cfg["evaluate"]["ovss"]["head"]["guidance_layers"], seen["layers"]):
        want = outs[i][:, 1:].reshape(2, 12, 12, -1).permute(0, 3, 1, 2)
        assert torch.allclose(t, want, atol=1e-5)
