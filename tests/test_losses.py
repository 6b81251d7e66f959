"""The distillation losses (method.md sections 3-5) against explicit numpy / scipy computations."""

import types

import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch
import torch.nn.functional as F

from declip.distill import losses as L


def _softmax(x, t):
    return scipy.special.softmax(np.asarray(x, dtype=np.float64) / t, axis=-1)


def _cos_matrix(tokens):
    t = tokens / np.linalg.norm(tokens, axis=-1, keepdims=True)
    return t @ t.T


# ------------------------------------------------------------------------------------------ crops
def test_crop_targets_one_batched_forward_normalised():
    """All regions of all images go through ONE teacher forward; crops are cut from each original image."""
    calls = []

    class Teacher:
        def encode_image(self, x):
            calls.append(x.shape)
            return x.mean(dim=(2, 3)) * 3.0 + 0.1  # not unit-norm: the caller normalises

    g = torch.Generator().manual_seed(2)
    originals = [torch.rand(3, 20, 30, generator=g), torch.rand(3, 40, 24, generator=g)]
    boxes = [torch.tensor([[0.0, 0, 16, 16]]), torch.tensor([[8.0, 8, 24, 20], [0, 0, 4, 30]])]
    out = L.crop_targets(Teacher(), originals, boxes, 8, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25])
    assert calls == [(3, 3, 8, 8)]
    from declip.data.crops import box_crops

    crops = torch.cat([box_crops(o, b.tolist(), 8) for o, b in zip(originals, boxes)])
    torch.testing.assert_close(out, F.normalize(((crops - 0.5) / 0.25).mean(dim=(2, 3)) * 3.0 + 0.1, dim=-1))


# ------------------------------------------------------------------------------ content: L_self
def test_region_features_are_normalised_token_means():
    content = torch.randn(2, 5, 4, 4, generator=torch.Generator().manual_seed(3))
    # Image 32 px, patch 8: the box covers tokens rows 1-2, cols 2-3 of image 1 exactly.
    rois = torch.tensor([[1.0, 16, 8, 32, 24]])
    f = L.region_features(content, rois, image_size=32)
    expected = content[1, :, 1:3, 2:4].mean(dim=(1, 2))
    torch.testing.assert_close(f[0], expected / expected.norm(), atol=1e-5, rtol=0)
    assert f.norm(dim=-1).sub(1).abs().max() < 1e-5


def test_self_loss_is_mean_one_minus_cosine():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 7)), rng.normal(size=(6, 7))
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    expected = np.mean([1 - a[i] @ b[i] for i in range(6)])
    got = L.self_loss(torch.tensor(a), torch.tensor(b))
    assert float(got) == pytest.approx(expected, abs=1e-9)
    assert float(L.self_loss(torch.tensor(a), torch.tensor(a))) == pytest.approx(0, abs=1e-9)


# -------------------------------------------------------------------------------------- KL, RCC
def test_rowwise_kl_matches_scipy_and_is_zero_for_equal_inputs():
    rng = np.random.default_rng(1)
    p, q = rng.normal(size=(2, 5, 5)), rng.normal(size=(2, 5, 5))
    t = 0.3
    expected = np.mean([scipy.stats.entropy(_softmax(p[b, i], t), _softmax(q[b, i], t)) for b in range(2) for i in range(5)])
    assert float(L.rowwise_kl(torch.tensor(p), torch.tensor(q), t)) == pytest.approx(expected, rel=1e-9)
    assert float(L.rowwise_kl(torch.tensor(p), torch.tensor(p), t)) == pytest.approx(0, abs=1e-12)
    # Direction: KL(target || student), not the reverse.
    reverse = np.mean([scipy.stats.entropy(_softmax(q[b, i], t), _softmax(p[b, i], t)) for b in range(2) for i in range(5)])
    assert abs(expected - reverse) > 1e-3


def test_rcc_loss_against_explicit_region_correlations():
    g = torch.Generator().manual_seed(4)
    content = torch.randn(2, 6, 4, 4, generator=g, dtype=torch.float64)  # student: 32 px / patch 8
    vfm = torch.randn(2, 5, 8, 8, generator=g, dtype=torch.float64)  # VFM: 32 px / patch 4
    # Boxes on student-token boundaries; N=2 bins = 1 student token = 2x2 VFM tokens each.
    rois = torch.tensor([[0.0, 0, 0, 16, 16], [1.0, 16, 8, 32, 24]], dtype=torch.float64)
    t = 0.2
    got = L.rcc_loss(content.float(), vfm.float(), rois, image_size=32, grid=2, temperature=t)

    kls = []
    for b, x1, y1 in [(0, 0, 0), (1, 16, 8)]:
        cs = content[b].numpy()[:, y1 // 8:y1 // 8 + 2, x1 // 8:x1 // 8 + 2].reshape(6, 4).T
        vv = vfm[b].numpy()[:, y1 // 4:y1 // 4 + 4, x1 // 4:x1 // 4 + 4]
        vs = vv.reshape(5, 2, 2, 2, 2).mean(axis=(2, 4)).reshape(5, 4).T  # 2x2 VFM tokens per bin
        rc, rv = _cos_matrix(cs), _cos_matrix(vs)
        kls += [scipy.stats.entropy(_softmax(rv[i], t), _softmax(rc[i], t)) for i in range(4)]
    assert float(got) == pytest.approx(np.mean(kls), rel=1e-4)


# ---------------------------------------------------------------------------------------- context
def test_context_l2_is_mean_row_norm_not_squared():
    rng = np.random.default_rng(2)
    s, v = rng.normal(size=(2, 6, 4)), rng.normal(size=(2, 6, 3))
    rows = [np.linalg.norm(_cos_matrix(v[b])[i] - _cos_matrix(s[b])[i]) for b in range(2) for i in range(6)]
    got = float(L.context_loss(torch.tensor(s), torch.tensor(v), "l2", 0.1))
    assert got == pytest.approx(np.mean(rows), rel=1e-6)  # losses run in fp32
    assert got != pytest.approx(np.mean(np.square(rows)), rel=1e-3)
    assert float(L.context_loss(torch.tensor(s), torch.tensor(s), "l2", 0.1)) == pytest.approx(0, abs=1e-7)


def test_context_kl_against_scipy():
    rng = np.random.default_rng(3)
    s, v = rng.normal(size=(2, 6, 4)), rng.normal(size=(2, 6, 3))
    t = 0.1
    expected = np.mean([scipy.stats.entropy(_softmax(_cos_matrix(v[b])[i], t), _softmax(_cos_matrix(s[b])[i], t))
                        for b in range(2) for i in range(6)])
    assert float(L.context_loss(torch.tensor(s), torch.tensor(v), "kl", t)) == pytest.approx(expected, rel=1e-6)


def test_context_kl_with_sd_gsc_uses_affinity_times_similarity():
    pytest.importorskip("declip.models.sd", reason="helper C's declip.models.sd (sd_gsc) is not written yet")
    rng = np.random.default_rng(4)
    s, v = rng.normal(size=(1, 5, 4)), rng.normal(size=(1, 5, 3))
    a = rng.random(size=(1, 5, 5))
    a /= a.sum(-1, keepdims=True)  # row-stochastic
    t = 0.1
    s_hat = a[0] @ _cos_matrix(v[0])  # journal SD-GSC: S_hat = A_self x S_VFM
    expected = np.mean([scipy.stats.entropy(_softmax(s_hat[i], t), _softmax(_cos_matrix(s[0])[i], t)) for i in range(5)])
    got = L.context_loss(torch.tensor(s), torch.tensor(v), "kl", t, affinity=torch.tensor(a))
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_resize_tokens_is_identity_on_same_grid_and_keeps_constant_maps():
    tok = torch.randn(2, 12, 3)
    assert L.resize_tokens(tok, (3, 4), (3, 4)) is tok
    const = torch.ones(1, 9, 2) * torch.tensor([2.0, -1.0])
    out = L.resize_tokens(const, (3, 3), (5, 5))
    assert out.shape == (1, 25, 2)
    torch.testing.assert_close(out, torch.ones(1, 25, 2) * torch.tensor([2.0, -1.0]))


# ------------------------------------------------------------------------------------------ total
METHOD = {"content_loss": "self", "rcc": True, "rcc_grid": 2, "rcc_temperature": 0.1, "context_loss": "kl",
          "context_temperature": 0.1, "coupled": False, "sd_gsc": False, "lambda_context": 0.25}


def _inputs(seed=5):
    g = torch.Generator().manual_seed(seed)
    out = types.SimpleNamespace(content=torch.randn(2, 6, 4, 4, generator=g), context=torch.randn(2, 16, 8, generator=g))
    rois = torch.tensor([[0.0, 0, 0, 16, 16], [1.0, 8, 8, 32, 32]])
    teachers = L.Teachers(crops=F.normalize(torch.randn(2, 6, generator=g), dim=-1),
                          vfm=torch.randn(2, 4, 4, 5, generator=g))
    return out, rois, teachers


def test_total_is_content_plus_lambda_context():
    out, rois, teachers = _inputs()
    terms = L.distill_losses(out, rois, teachers, METHOD, image_size=32)
    ls = L.self_loss(L.region_features(out.content, rois, 32), teachers.crops)
    lr = L.rcc_loss(out.content, teachers.vfm.permute(0, 3, 1, 2), rois, 32, 2, 0.1)
    lc = L.context_loss(out.context, teachers.vfm.flatten(1, 2), "kl", 0.1)
    for k, v in (("loss_self", ls), ("loss_rcc", lr), ("loss_context", lc)):
        assert float(terms[k]) == pytest.approx(float(v), rel=1e-6)
    assert float(terms["loss"]) == pytest.approx(float(ls + lr + 0.25 * lc), rel=1e-6)


def test_coupled_uses_the_dense_map_and_clipself_has_no_context():
    out, rois, teachers = _inputs()
    coupled = L.distill_losses(out, rois, teachers, dict(METHOD, coupled=True), image_size=32)
    expected = L.context_loss(out.content.flatten(2).transpose(1, 2), teachers.vfm.flatten(1, 2), "kl", 0.1)
    assert float(coupled["loss_context"]) == pytest.approx(float(expected), rel=1e-6)
    clipself = dict(METHOD, rcc=False, context_loss="none")
    out.context = None
    terms = L.distill_losses(out, rois, L.Teachers(crops=teachers.crops), clipself, image_size=32)
    assert float(terms["loss_context"]) == 0 and float(terms["loss_rcc"]) == 0
    assert float(terms["loss"]) == pytest.approx(float(terms["loss_self"]))
    assert L.needs(clipself) == {"vfm": False, "sd": False}
    assert L.needs(dict(METHOD, sd_gsc=True)) == {"vfm": True, "sd": True}


def test_context_features_resized_to_a_different_teacher_grid():
    out, rois, teachers = _inputs()
    teachers.vfm = torch.randn(2, 6, 6, 5, generator=torch.Generator().manual_seed(6))  # e.g. SAM's own grid
    terms = L.distill_losses(out, rois, teachers, dict(METHOD, rcc=False), image_size=32)
    resized = F.interpolate(out.context.transpose(1, 2).reshape(2, 8, 4, 4), size=(6, 6), mode="bilinear",
                            align_corners=False).flatten(2).transpose(1, 2)
    expected = L.context_loss(resized, teachers.vfm.flatten(1, 2), "kl", 0.1)
    assert float(terms["loss_context"]) == pytest.approx(float(expected), rel=1e-6)


def test_losses_backpropagate_to_the_student_only():
    out, rois, teachers = _inputs()
    out.content.requires_grad_(True)
    out.context.requires_grad_(True)
    terms = L.distill_losses(out, rois, teachers, METHOD, image_size=32)
    terms["loss"].backward()
    assert out.content.grad.abs().sum() > 0 and out.context.grad.abs().sum() > 0


def test_token_norm_before_pool_normalises_tokens_before_roialign():
    """With DenseOutput.token_norm (method.token_norm_before_pool) L_self pools unit tokens: for a box that
    covers whole tokens, the region feature is the normalised mean of the normalised tokens (CLIPSelf
    encode_dense l.586 then roi_align), computed here by hand; the context loss is unaffected."""
    from declip.models.dense import DenseOutput

    raw, rois, teachers = _inputs()
    rois = torch.tensor([[0.0, 0, 0, 16, 16], [1.0, 8, 8, 24, 24]])  # token-aligned: tokens 0-1 / 1-2
    for norm in (False, True):
        out = DenseOutput(content=raw.content, context=raw.context, token_norm=norm)
        terms = L.distill_losses(out, rois, teachers, dict(METHOD, rcc=False), image_size=32)
        tokens = raw.content / raw.content.norm(dim=1, keepdim=True) if norm else raw.content
        feats = torch.stack([tokens[0, :, 0:2, 0:2].mean(dim=(1, 2)), tokens[1, :, 1:3, 1:3].mean(dim=(1, 2))])
        feats = feats / feats.norm(dim=1, keepdim=True)
        want = (1 - (feats * teachers.crops).sum(1)).mean()
        assert float(terms["loss_self"]) == pytest.approx(float(want), rel=1e-5)
        expected_ctx = L.context_loss(raw.context, teachers.vfm.flatten(1, 2), "kl", 0.1)
        assert float(terms["loss_context"]) == pytest.approx(float(expected_ctx), rel=1e-6)
