"""Multi-process distillation (distill.gpus > 1 launches torchrun): two CPU processes over gloo, every
dense mode, on a tiny EVA02-style tower with separate q/k/v projections (the layout of the released EVA02
towers, where a trainable projection the mode never reads made DDP fail with "parameters that were not
used in producing loss"). Two optimizer steps per mode: DDP reports an unfinished reduction at the NEXT
forward. Both ranks must end with bit-identical weights, and the trainable weights must have moved.
"""

import os
import socket

import numpy as np
import pytest
import torch
from PIL import Image

# L_self only: which weights a mode reads is decided by its attention (the context tokens come from the
# same Q/K), and leaving the VFM teacher out keeps the test quick.
MODES = {m: {"dense_mode": m, "context_loss": "none", "rcc": False, "sd_gsc": False}
         for m in ("vanilla", "value", "qq", "kk", "csa")}


def _config(root):
    from declip.config import load

    from test_dense import TEXT

    return load(overrides={
        "student": {"model": "declip-test-ddp-eva", "checkpoint": str(root / "clip.pt"), "checkpoint_format": "open_clip",
                    "image_size": 32, "crop_size": 32,
                    "custom_config": {"embed_dim": 16, "text_cfg": TEXT, "custom_text": True,
                                      "vision_cfg": {"image_size": 32, "timm_model_name": "declip_test_tiny_eva",
                                                     "timm_model_pretrained": False, "timm_pool": "token",
                                                     "timm_proj": None}}},
        "teachers": {"cache_mode": "online"},
        "datasets": {"testset": {"kind": "mini2d", "root": str(root / "images")}},
        "distill": {"dataset": "testset", "batch_size": 2, "per_device_batch": 1, "max_steps": 2, "warmup_steps": 1,
                    "lr": 1e-3, "checkpoint_every": 100, "log_every": 1, "num_workers": 0},
    })


def _worker(rank: int, root: str, ports: dict) -> None:
    from pathlib import Path

    from declip.config import variant_method
    from declip.data.images import list_images
    from declip.distill import trainer as T

    from test_dense import _register_tiny_eva

    torch.set_num_threads(1)
    _register_tiny_eva("declip_test_tiny_eva", fused=False)
    root = Path(root)
    cfg = _config(root)
    items = list_images(cfg["datasets"]["testset"])
    captured = {}
    build = T.build_models

    def spy(*args, **kwargs):  # keep this rank's trained CLIP to compare the ranks' weights
        models = build(*args, **kwargs)
        captured["clip"] = models[0]
        return models

    T.build_models = spy
    os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1")
    for mode, overrides in MODES.items():
        os.environ["MASTER_PORT"] = str(ports[mode])
        method = dict(variant_method(cfg, "declip"), **overrides)
        T.distill(cfg, method, mode, items, root / mode / "model.pt", device="cpu")
        torch.save(captured["clip"].state_dict(), root / mode / f"rank{rank}.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_processes_train_every_mode_to_identical_weights(tmp_path):
    from declip.models.clip import create_clip, save_clip

    from test_dense import _register_tiny_eva

    (tmp_path / "images").mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)).save(tmp_path / "images" / f"{i:06d}.png")
    _register_tiny_eva("declip_test_tiny_eva", fused=False)
    torch.manual_seed(0)
    original = create_clip(_config(tmp_path)["student"])
    save_clip(original, tmp_path / "clip.pt")
    ports = {m: _free_port() for m in MODES}
    torch.multiprocessing.spawn(_worker, args=(str(tmp_path), ports), nprocs=2, join=True)
    start = original.state_dict()
    for mode in MODES:
        a = torch.load(tmp_path / mode / "rank0.pt", weights_only=True)
        b = torch.load(tmp_path / mode / "rank1.pt", weights_only=True)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (mode, k)
        moved = [k for k in a if not torch.equal(a[k], start[k])]
        assert any(".blocks.1.attn" in k for k in moved), (mode, moved[:5])
        assert (tmp_path / mode / "model.pt").is_file()
