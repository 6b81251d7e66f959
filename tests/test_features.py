"""`declip features` end to end: EVA02-B-16 random weights stored in EVA-CLIP format, three input kinds,
every dense mode; plus the config's custom tiny CLIP."""

import argparse
import copy

import numpy as np
import pytest
import torch
from PIL import Image

import declip.models.clip as clip_mod
from declip import config as config_mod
from declip.cli import features
from declip.errors import UserFacingError
from declip.models.convert import open_clip_to_eva_clip
from declip.models.dense import DenseCLIP

SIZE = 64  # 4 x 4 tokens for /16: keeps a CPU forward of EVA02-B-16 well under a second
MODES = ["vanilla", "value", "qq", "kk", "csa"]


@pytest.fixture(scope="module")
def cfg():
    return config_mod.load()


@pytest.fixture(scope="module")
def eva_base():
    """One random EVA02-B-16 architecture; every CLI run below starts from a copy of it (open_clip's random
    init takes seconds) and then loads the checkpoint through the real load/convert path."""
    torch.manual_seed(0)
    return clip_mod.create_clip({"model": "EVA02-B-16"}).eval()


@pytest.fixture(scope="module")
def eva_checkpoint(tmp_path_factory, eva_base):
    """EVA02-B-16 random weights in EVA-CLIP key layout, fp16 like the released file, DDP-wrapped."""
    torch.manual_seed(1)
    sd = {k: v + 0.02 * torch.randn_like(v) if v.ndim <= 1 else v for k, v in eva_base.state_dict().items()}
    eva = {"module." + k: v.half() for k, v in open_clip_to_eva_clip(sd).items()}
    path = tmp_path_factory.mktemp("ckpt") / "EVA02_CLIP_B_psz16_s8B.pt"
    torch.save({"state_dict": eva}, path)
    return path


@pytest.fixture()
def fast_create(monkeypatch, eva_base):
    real = clip_mod.create_clip

    def create(student_cfg):
        return copy.deepcopy(eva_base) if student_cfg["model"] == "EVA02-B-16" else real(student_cfg)

    monkeypatch.setattr(clip_mod, "create_clip", create)


@pytest.fixture(scope="module")
def reference(eva_checkpoint, eva_base):
    """The converted weights, loaded by the shared loader (EVA-CLIP format path)."""
    import declip.models.clip as m

    original, m.create_clip = m.create_clip, lambda cfg: copy.deepcopy(eva_base)
    try:
        return m.load_clip({"model": "EVA02-B-16", "checkpoint": str(eva_checkpoint), "checkpoint_format": "eva-clip"})
    finally:
        m.create_clip = original


@pytest.fixture(scope="module")
def images(tmp_path_factory, cfg):
    """Two images (one needs letterbox padding) and the normalised pixels the CLI must feed the model."""
    folder = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    arrays = {"a": rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), "b": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)}
    mean = np.array(cfg["student"]["mean"], dtype=np.float32)[:, None, None]
    std = np.array(cfg["student"]["std"], dtype=np.float32)[:, None, None]
    pixels = []
    for name, arr in arrays.items():
        Image.fromarray(arr).save(folder / f"{name}.png")
        canvas = np.zeros((3, SIZE, SIZE), dtype=np.float32)  # long side is already 64: padding only
        canvas[:, :arr.shape[0], :arr.shape[1]] = arr.transpose(2, 0, 1) / 255.0
        pixels.append((canvas - mean) / std)
    npy = folder.parent / "pixels.npy"
    np.save(npy, np.stack(pixels))
    return folder, npy, torch.from_numpy(np.stack(pixels))


def run_cli(cfg, *argv):
    parser = argparse.ArgumentParser()
    features.add_arguments(parser)
    return features.run(parser.parse_args([str(a) for a in argv]), cfg)


def eva_args(checkpoint, mode, source, out):
    return ["--model", "EVA02-B-16", "--checkpoint", checkpoint, "--checkpoint-format", "eva-clip", "--mode", mode,
            "--image-size", SIZE, "--input", source, "--out", out, "--batch-size", 1, "--device", "cpu"]


def expected(reference, mode, pixels):
    with torch.no_grad():
        return DenseCLIP(reference, dense_mode=mode)(pixels)


def test_image_folder_and_file(cfg, eva_checkpoint, reference, images, tmp_path, fast_create):
    folder, _, pixels = images
    result = run_cli(cfg, *eva_args(eva_checkpoint, "qq", folder, tmp_path / "folder.npz"))
    assert result["metrics"]["images"] == 2
    got = np.load(tmp_path / "folder.npz")
    want = expected(reference, "qq", pixels)
    assert list(got["image_ids"]) == ["a", "b"]
    np.testing.assert_allclose(got["scales"], [1.0, 1.0])
    assert tuple(got["grid"]) == (4, 4) and str(got["mode"]) == "qq"
    assert got["content"].dtype == np.float32 and got["content"].shape == (2, 512, 4, 4)
    np.testing.assert_allclose(got["content"], want.content.numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(got["context"], want.context.numpy(), atol=1e-4, rtol=1e-4)

    run_cli(cfg, *eva_args(eva_checkpoint, "qq", folder / "b.png", tmp_path / "file.npz"))
    single = np.load(tmp_path / "file.npz")
    assert list(single["image_ids"]) == ["b"]
    np.testing.assert_allclose(single["content"][0], got["content"][1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_npy_input_every_mode(cfg, eva_checkpoint, reference, images, tmp_path, fast_create, mode):
    _, npy, pixels = images
    run_cli(cfg, *eva_args(eva_checkpoint, mode, npy, tmp_path / "out.npz"))
    got = np.load(tmp_path / "out.npz")
    want = expected(reference, mode, pixels)
    assert list(got["image_ids"]) == ["0", "1"]
    np.testing.assert_allclose(got["content"], want.content.numpy(), atol=1e-4, rtol=1e-4)
    width = {"vanilla": 0, "value": 0, "qq": 768, "kk": 768, "csa": 1536}[mode]
    assert got["context"].shape == (2, 16, width)
    if want.context is not None:
        np.testing.assert_allclose(got["context"], want.context.numpy(), atol=1e-4, rtol=1e-4)


def test_config_custom_model(cfg, tmp_path, images):
    """--model equal to student.model: the config's custom tiny CLIP (open_clip layout checkpoint)."""
    folder, _, _ = images
    model = clip_mod.create_clip(cfg["student"])
    ckpt = tmp_path / "mini.pt"
    clip_mod.save_clip(model, ckpt)
    run_cli(cfg, "--model", cfg["student"]["model"], "--checkpoint", ckpt, "--checkpoint-format", "open_clip",
            "--mode", "csa", "--image-size", 96, "--input", folder, "--out", tmp_path / "mini.npz", "--device", "cpu")
    got = np.load(tmp_path / "mini.npz")
    assert got["content"].shape == (2, 64, 12, 12) and got["context"].shape == (2, 144, 256)
    np.testing.assert_allclose(got["scales"], [1.5, 1.5])


def test_user_errors(cfg, eva_checkpoint, images, tmp_path, fast_create):
    folder, _, _ = images
    with pytest.raises(UserFacingError, match="--checkpoint"):
        run_cli(cfg, "--model", "EVA02-B-16", "--input", folder, "--out", tmp_path / "x.npz")
    with pytest.raises(UserFacingError, match="multiple of the patch size"):
        run_cli(cfg, *eva_args(eva_checkpoint, "qq", folder, tmp_path / "x.npz")[:-4], "--image-size", 72)
    with pytest.raises(UserFacingError, match="is not an image"):
        run_cli(cfg, *eva_args(eva_checkpoint, "qq", tmp_path / "missing.txt", tmp_path / "x.npz"))
    assert not (tmp_path / "x.npz").exists()


def test_context_is_the_modes_own_features(cfg, eva_checkpoint, reference, images, tmp_path, fast_create):
    """`--mode kk` returns K and `--mode csa` Q||K (normalised halves / sqrt 2) with context_proj auto,
    checked against Q and K computed here from the last block's raw weights."""
    import torch.nn.functional as F
    from test_dense import last_block, manual_qkv

    _, npy, pixels = images
    seen = {}
    blk = last_block(reference)

    def grab(mod, args, kwargs):
        seen["x"] = args[0]

    handle = blk.register_forward_pre_hook(grab, with_kwargs=True)
    with torch.no_grad():
        DenseCLIP(reference, dense_mode="vanilla")(pixels)
        handle.remove()
        q, k, _ = manual_qkv(reference, blk, seen["x"])
    q, k = q[:, 1:], k[:, 1:]
    for mode, want in (("kk", k), ("csa", torch.cat([F.normalize(q, dim=-1), F.normalize(k, dim=-1)], -1) / 2 ** 0.5)):
        run_cli(cfg, *eva_args(eva_checkpoint, mode, npy, tmp_path / f"{mode}.npz"))
        got = torch.from_numpy(np.load(tmp_path / f"{mode}.npz")["context"])
        torch.testing.assert_close(got, want, atol=2e-3, rtol=2e-3)
