"""SD self-attention affinity (journal SD-GSC): capture processor, resizing, aggregation, determinism."""

import pytest
import torch

from declip import config
from declip.errors import UserFacingError
from declip.models.sd import AffinityRecorder, CaptureSelfAttnProcessor, install_capture, load_sd, resize_affinity, sd_gsc

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def cfg():
    return config.load()


@pytest.fixture(scope="module")
def sd(cfg):
    return load_sd(cfg["teachers"]["sd"], cfg["seed"])


def _row_stochastic(*shape, seed=0):
    a = torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) + 0.01
    return a / a.sum(-1, keepdim=True)


def test_capture_processor_leaves_the_unet_forward_unchanged(cfg):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**cfg["teachers"]["sd"]["tiny"]["unet"]).eval()
    sample = torch.randn(2, 4, 32, 32)
    cond = torch.randn(2, 5, unet.config.cross_attention_dim)
    t = torch.tensor([100, 100])
    with torch.no_grad():
        reference = unet(sample, t, encoder_hidden_states=cond).sample  # default (SDPA) processors
        recorder = AffinityRecorder(min_map_size=8)
        assert install_capture(unet, recorder) == 4  # down 32x32, mid 16x16, two up 32x32 attn1 layers
        recorder.start((12, 12))
        captured = unet(sample, t, encoder_hidden_states=cond).sample
    assert recorder.count == 4
    torch.testing.assert_close(captured, reference, atol=1e-5, rtol=1e-5)
    assert recorder.finish().shape == (2, 144, 144)


def test_captured_map_is_the_head_mean_of_softmax_qk():
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=2, dim_head=8).eval()
    recorder = AffinityRecorder(min_map_size=1)
    attn.set_processor(CaptureSelfAttnProcessor(recorder))
    x = torch.randn(3, 16, 16)  # 4 x 4 tokens
    recorder.start((4, 4))
    with torch.no_grad():
        attn(x)
        q = attn.to_q(x).view(3, 16, 2, 8).transpose(1, 2)
        k = attn.to_k(x).view(3, 16, 2, 8).transpose(1, 2)
    expected = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, dim=-1).mean(1)
    torch.testing.assert_close(recorder.finish(), expected, atol=1e-6, rtol=1e-5)


def test_resize_both_axes_on_a_hand_made_map():
    # 2x2 -> 4x4 bilinear (half-pixel centres): 1-D weights [[1,0],[.75,.25],[.25,.75],[0,1]]
    r = torch.tensor([[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]])
    k = torch.kron(r, r)  # (16, 4) acting on row-major flattened grids
    a = torch.tensor([[0.7, 0.1, 0.1, 0.1],
                      [0.0, 1.0, 0.0, 0.0],
                      [0.2, 0.2, 0.5, 0.1],
                      [0.25, 0.25, 0.25, 0.25]])
    expected = k @ a @ k.T
    expected = expected / expected.sum(-1, keepdim=True)
    out = resize_affinity(a[None], 2, (4, 4))[0]
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)
    # query row 0 of the output is query token 0 of the input, its keys spread by the same 1-D weights
    torch.testing.assert_close(out[0], (k @ a[0]) / (k @ a[0]).sum())


def test_resize_down_keeps_uniform_and_same_size_is_identity():
    uniform = torch.full((1, 16, 16), 1 / 16)
    torch.testing.assert_close(resize_affinity(uniform, 4, (2, 2)), torch.full((1, 4, 4), 0.25))
    a = _row_stochastic(2, 9, 9)
    torch.testing.assert_close(resize_affinity(a, 3, (3, 3)), a)


def test_mean_and_product_aggregation():
    a1, a2 = _row_stochastic(2, 16, 16, seed=1), _row_stochastic(2, 16, 16, seed=2)
    mean = AffinityRecorder(1, "mean")
    prod = AffinityRecorder(1, "product")
    for rec in (mean, prod):
        rec.start((4, 4))
        rec.add(a1, 4)
        rec.add(a2, 4)
    torch.testing.assert_close(mean.finish(), (a1 + a2) / 2)
    torch.testing.assert_close(prod.finish(), a1 @ a2)
    with pytest.raises(UserFacingError):
        AffinityRecorder(1, "max")


def test_affinity_is_row_stochastic_and_deterministic(cfg, sd):
    images = torch.rand(2, 3, 60, 64, generator=torch.Generator().manual_seed(0))
    a = sd.affinity(images, (12, 12))
    assert a.shape == (2, 144, 144)
    assert (a >= 0).all()
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 144))
    torch.testing.assert_close(sd.affinity(images, (12, 12)), a, atol=0, rtol=0)
    # the same seeded noise for every image: a result does not depend on its batch
    torch.testing.assert_close(sd.affinity(images[1:], (12, 12))[0], a[1], atol=1e-5, rtol=1e-4)
    other = load_sd(dict(cfg["teachers"]["sd"], noise_seed=1), cfg["seed"])
    assert not torch.allclose(other.affinity(images, (12, 12)), a, atol=1e-6)


def test_no_layer_large_enough_is_a_user_error(cfg):
    sd = load_sd(dict(cfg["teachers"]["sd"], min_map_size=64), cfg["seed"])
    with pytest.raises(UserFacingError, match="min_map_size"):
        sd.affinity(torch.rand(1, 3, 32, 32), (12, 12))
    assert not sd.recorder.active


def test_sd_gsc_is_affinity_times_similarity():
    a = torch.tensor([[[0.5, 0.5], [0.0, 1.0]]])
    s = torch.tensor([[[1.0, 0.2], [0.2, 1.0]]])
    torch.testing.assert_close(sd_gsc(a, s), torch.tensor([[[0.6, 0.6], [0.2, 1.0]]]))
    torch.testing.assert_close(sd_gsc(torch.eye(2)[None], s), s)


def test_matrix_resize_equals_2d_interpolation_of_each_axis():
    import torch.nn.functional as F

    a = _row_stochastic(2, 64, 64, seed=3)  # 8 x 8 tokens, downsampled to 5 x 5 (like 64 -> 35)
    keys = F.interpolate(a.reshape(128, 1, 8, 8), size=(5, 5), mode="bilinear", align_corners=False, antialias=True)
    keys = keys.reshape(2, 64, 25).transpose(1, 2)
    both = F.interpolate(keys.reshape(50, 1, 8, 8), size=(5, 5), mode="bilinear", align_corners=False, antialias=True)
    expected = both.reshape(2, 25, 25).transpose(1, 2)
    expected = expected / expected.sum(-1, keepdim=True)
    torch.testing.assert_close(resize_affinity(a, 8, (5, 5)), expected, atol=1e-6, rtol=1e-5)
