"""Label-free pretraining of the mini teachers (issue 15): each objective takes a few steps on a handful of
unlabelled images, the saved weights load into the upstream class, and the loaded teacher is the trained one."""

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from declip import config
from declip.distill.cache import OnlineTeacher, teacher_spec
from declip.errors import UserFacingError
from declip.models import mini_teachers as mt

torch.set_num_threads(1)
FAST = {"steps": 2, "batch_size": 3, "warmup_steps": 1, "n_local": 1,
        "sd": {"vae_steps": 1, "unet_steps": 1, "batch_size": 2, "crop_size": 16}}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("mini")
    (root / "train").mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        img = np.zeros((96, 96, 3), np.uint8) + rng.integers(0, 255, 3, dtype=np.uint8)
        img[20:60, 30:70] = rng.integers(0, 255, 3)  # one object on a flat background
        Image.fromarray(img).save(root / "train" / f"{i:06d}.png")
    cfg = config.load(overrides={"mini": {"teachers": FAST}, "teachers": {"tiny_weights": str(root / "teachers")}})
    return cfg, root


@pytest.mark.parametrize("name", ["dinov2_b", "dino_b8", "sam_b"])
def test_vfm_pretraining_changes_the_weights_and_the_cache_loads_them(world, name):
    cfg, root = world
    out = mt.weights_path(cfg, name)
    summary = mt.pretrain_teacher(cfg, name, root, out)
    assert summary["objective"] == {"dinov2_b": "dino+ibot", "dino_b8": "dino", "sam_b": "simmim"}[name]
    assert summary["steps"] == 2 and np.isfinite(summary["final_loss"])
    images = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    trained = OnlineTeacher(cfg, f"vfm:{name}").get(images)
    random_cfg = copy.deepcopy(cfg)
    random_cfg["teachers"]["tiny_weights"] = None
    random = OnlineTeacher(random_cfg, f"vfm:{name}").get(images)
    assert trained.shape == random.shape and not torch.allclose(trained, random)
    # The cache fingerprint follows the weights file, so a retrained teacher is never read from stale shards.
    assert teacher_spec(cfg, f"vfm:{name}")["weights"] != teacher_spec(random_cfg, f"vfm:{name}")["weights"]


def test_sd_pretraining_sets_the_latent_scaling_and_loads(world):
    cfg, root = world
    summary = mt.pretrain_teacher(cfg, "sd", root, mt.weights_path(cfg, "sd"))
    assert summary["objective"] == "vae_mse_kl+ddpm_eps" and summary["scaling_factor"] > 0
    teacher = OnlineTeacher(cfg, "sd")
    assert teacher.model.vae.config.scaling_factor == pytest.approx(summary["scaling_factor"])
    a = teacher.get(torch.rand(1, 3, 96, 96))
    assert a.shape == (1, 144, 144) and torch.allclose(a.sum(-1), torch.ones(1, 144), atol=1e-4)


def test_missing_weights_name_the_rule_and_the_random_option(world, tmp_path):
    cfg, _ = world
    c = copy.deepcopy(cfg)
    c["teachers"]["tiny_weights"] = str(tmp_path / "none")
    with pytest.raises(UserFacingError, match="tiny_weights: null"):
        OnlineTeacher(c, "vfm:dino_b16")


def test_crops_stay_inside_the_image_and_have_the_size_asked():
    gen = torch.Generator().manual_seed(0)
    boxes = mt.random_boxes(200, 96.0, (0.08, 0.35), gen)
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 96 + 1e-4).all()
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / 96**2
    assert area.min() > 0.05 and area.max() < 0.36
    x = mt.crops(torch.rand(3, 3, 96, 96), torch.tensor([0, 2]), 32, (0.3, 1.0), gen)
    assert x.shape == (2, 3, 32, 32)


def test_sd_unet_trains_at_the_extraction_size_and_within_max_timestep():
    """crop_size null = teachers.sd.resolution; every UNet training timestep lies below max_timestep."""
    from declip.models.sd import _tiny_sd

    cfg = config.load()
    unet, vae, scheduler, embeds = _tiny_sd(cfg["teachers"]["sd"], 0)
    seen = []
    add_noise = scheduler.add_noise

    def spy(latents, noise, t):
        seen.append((tuple(latents.shape[-2:]), t.clone()))
        return add_noise(latents, noise, t)

    scheduler.add_noise = spy
    sc = {"crop_size": None, "max_timestep": 7, "vae_steps": 1, "unet_steps": 3, "batch_size": 8, "lr": 1e-4,
          "warmup_steps": 1, "kl_weight": 1e-6, "scale": [0.5, 1.0]}
    images = torch.rand(4, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(0)
    mt.train_sd(unet.train(), vae.train(), scheduler, embeds, images, sc, gen, range, resolution=24)
    assert len(seen) == 3 and {s for s, _ in seen} == {(12, 12)}  # the tiny VAE halves 24 px
    ts = torch.cat([t for _, t in seen])
    assert int(ts.max()) < 7 and int(ts.min()) >= 0
