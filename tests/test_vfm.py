"""VFM context teachers: tiny configs load offline and give last-layer patch tokens on the student grid."""

import pytest
import torch
import torch.nn.functional as F

from declip import config
from declip.data.images import letterbox, normalize
from declip.distill.cache import student_grid
from declip.errors import UserFacingError
from declip.models.vfm import load_vfm, sam_neck_any_size

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def cfg():
    return config.load()


def _images():
    g = torch.Generator().manual_seed(1)
    return torch.rand(2, 3, 72, 96, generator=g)  # not square: the letterbox pads the bottom


def test_every_tiny_vfm_gives_the_student_grid(cfg):
    grid = student_grid(cfg["student"])
    assert grid == (12, 12)  # 96 px / patch 8, the mini analogue of 560 / 16
    images = _images()
    for name, spec in cfg["teachers"]["vfms"].items():
        vfm = load_vfm(spec, cfg["seed"], name=name)
        out = vfm.tokens(images, grid)
        expected_dim = spec["tiny"]["output_channels"] if spec["type"] == "sam" else spec["tiny"]["hidden_size"]
        assert out.shape == (2, 12, 12, expected_dim), name
        assert out.dtype == torch.float32 and torch.isfinite(out).all(), name
        assert out.std() > 0.1, f"{name}: degenerate random init"


def test_dinov2_reg_tokens_are_normed_patch_tokens_without_cls_and_registers(cfg):
    spec = cfg["teachers"]["vfms"]["dinov2_b"]
    vfm = load_vfm(spec, 0)
    images = _images()
    out = vfm.tokens(images, (12, 12))
    # independent path: letterbox to 12 x 8 px, normalise, last hidden layer through the final LayerNorm
    x = normalize(letterbox(images, 96)[0], spec["mean"], spec["std"])
    with torch.no_grad():
        hidden = vfm.model(pixel_values=x, output_hidden_states=True).hidden_states[-1]
        normed = vfm.model.layernorm(hidden)
    skip = 1 + spec["tiny"]["num_register_tokens"]
    assert normed.shape[1] == skip + 144
    torch.testing.assert_close(out, normed[:, skip:].reshape(2, 12, 12, -1), atol=1e-5, rtol=1e-5)


def test_list_of_images_of_different_sizes_matches_individual_calls(cfg):
    vfm = load_vfm(cfg["teachers"]["vfms"]["dino_b8"], 0)
    a, b = torch.rand(3, 50, 90), torch.rand(3, 96, 40)
    both = vfm.tokens([a, b], (12, 12))
    torch.testing.assert_close(both[1], vfm.tokens(b[None], (12, 12))[0], atol=1e-5, rtol=1e-5)


def test_seeded_init_is_deterministic_and_leaves_global_rng_alone(cfg):
    spec = cfg["teachers"]["vfms"]["dinov2_b_noreg"]
    images = _images()
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = load_vfm(spec, 0).tokens(images, (12, 12))
    assert torch.equal(torch.rand(3), before)  # construction did not consume the caller's RNG
    b = load_vfm(spec, 0).tokens(images, (12, 12))
    c = load_vfm(spec, 1).tokens(images, (12, 12))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_fixed_input_size_is_resized_bilinearly_to_the_grid(cfg):
    vfm = load_vfm(cfg["teachers"]["vfms"]["sam_b"], 0)  # input_size 128 -> 16 x 16 neck grid
    images = _images()
    native = vfm.tokens(images, (16, 16))
    resized = vfm.tokens(images, (12, 12))
    expected = F.interpolate(native.permute(0, 3, 1, 2), size=(12, 12), mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
    torch.testing.assert_close(resized, expected, atol=1e-5, rtol=1e-5)


def test_sam_any_size_path_equals_native_forward_and_runs_at_grid_x_patch(cfg):
    spec = dict(cfg["teachers"]["vfms"]["sam_b"])
    vfm = load_vfm(spec, 0)
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(sam_neck_any_size(vfm.encoder, x), vfm.encoder(pixel_values=x).last_hidden_state,
                                   atol=1e-5, rtol=1e-5)
    spec["input_size"] = None  # authors' way: grid x patch = 96 px with the pos-embedding resized
    out = load_vfm(spec, 0).tokens(_images(), (12, 12))
    assert out.shape == (2, 12, 12, 32) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["dino_b16", "sam_b"])
def test_local_checkpoint_folder_round_trip(cfg, tmp_path, name):
    spec = cfg["teachers"]["vfms"][name]
    tiny = load_vfm(spec, 3)
    tiny.model.save_pretrained(tmp_path / name)
    loaded = load_vfm(dict(spec, tiny=None, checkpoint=str(tmp_path / name)), 0)
    images = _images()
    torch.testing.assert_close(loaded.tokens(images, (12, 12)), tiny.tokens(images, (12, 12)))


def test_missing_checkpoint_is_a_user_error(cfg, tmp_path):
    spec = dict(cfg["teachers"]["vfms"]["dinov2_b"], tiny=None, checkpoint=str(tmp_path / "nope"))
    with pytest.raises(UserFacingError, match="teachers.vfms.dinov2_b.checkpoint"):
        load_vfm(spec, 0, name="dinov2_b")
    with pytest.raises(UserFacingError, match="neither"):
        load_vfm(dict(spec, checkpoint=None), 0, name="dinov2_b")


def test_full_sam_model_folder_keeps_only_the_image_encoder(cfg, tmp_path):
    from transformers import SamConfig, SamModel

    spec = cfg["teachers"]["vfms"]["sam_b"]
    vision = dict(spec["tiny"], patch_size=spec["patch_size"], image_size=spec["input_size"])
    torch.manual_seed(0)
    full = SamModel(SamConfig(vision_config=vision)).eval()
    full.save_pretrained(tmp_path / "sam")
    loaded = load_vfm(dict(spec, tiny=None, checkpoint=str(tmp_path / "sam")), 0)
    x = normalize(letterbox(_images(), 128)[0], spec["mean"], spec["std"])
    with torch.no_grad():
        expected = full.get_image_embeddings(x)  # SAM's image embedding = neck output
    native = loaded.tokens(_images(), (16, 16))
    torch.testing.assert_close(native, expected.permute(0, 2, 3, 1), atol=1e-5, rtol=1e-5)
