"""Teacher cache: extraction on generated images, resumability, reading back what the teacher computes."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from declip import config
from declip.data.images import load_image
from declip.distill import cache as cache_mod
from declip.distill.cache import OnlineTeacher, TeacherCache, dense_from_topk, extract, student_grid
from declip.errors import UserFacingError

torch.set_num_threads(1)
N_IMAGES = 7


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    (root / "train").mkdir()
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        h, w = rng.integers(40, 110, size=2)  # varied sizes and aspect ratios
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "train" / f"{i:06d}.png")
    return root


def _cfg(image_root, **teachers):
    over = {"datasets": {"gen": {"kind": "manual", "root": str(image_root), "split": "train"}},
            "teachers": {"shard_size": 3, "batch_size": 2, "num_workers": 0, "tiny_weights": None, **teachers}}
    return config.load(overrides=over)


def _images(image_root):
    return [load_image(p) for p in sorted((image_root / "train").glob("*.png"))]


def test_student_grid_from_config_without_weights():
    cfg = config.load()
    assert student_grid(cfg["student"]) == (12, 12)
    assert student_grid({"model": "EVA02-B-16", "image_size": 560}) == (35, 35)  # timm trunk: patch from its name
    assert student_grid({"model": "ViT-L-14", "image_size": 560}) == (40, 40)
    with pytest.raises(UserFacingError):
        student_grid({"model": "ViT-B-16", "image_size": 561})


def test_vfm_extraction_reads_back_the_online_teacher(image_root, tmp_path):
    cfg = _cfg(image_root)
    index = extract(cfg, "gen", "vfm:dinov2_b", tmp_path / "index.json", device="cpu", progress=False)
    on_disk = json.loads((tmp_path / "index.json").read_text())
    assert on_disk["kind"] == "tokens" and on_disk["grid"] == [12, 12]
    assert on_disk["image_ids"] == [f"{i:06d}" for i in range(N_IMAGES)]
    assert on_disk["shards"] == ["shard-00000.npz", "shard-00001.npz", "shard-00002.npz"]  # 3 + 3 + 1
    assert index["throughput"]["images"] == N_IMAGES
    cached = TeacherCache(tmp_path / "index.json")
    assert cached.kind == "tokens" and cached.grid == (12, 12)
    online = OnlineTeacher(cfg, "vfm:dinov2_b", device="cpu").get(_images(image_root))
    ids = ["000006", "000000", "000004"]  # out of order, across shards
    got = cached.get(ids)
    assert got.dtype == torch.float32 and got.shape == (3, 12, 12, 64)
    torch.testing.assert_close(got, online[[6, 0, 4]], atol=2e-3, rtol=2e-3)  # fp16 storage
    with pytest.raises(UserFacingError, match="not in the teacher cache"):
        cached.get(["nope"])


def _arrays(folder):
    c = TeacherCache(folder / "index.json")
    return c.get(c.index["image_ids"])


def test_resume_after_deleted_shard_and_interrupt_gives_identical_cache(image_root, tmp_path, monkeypatch):
    cfg = _cfg(image_root)
    full = tmp_path / "full"
    extract(cfg, "gen", "vfm:dino_b8", full / "index.json", device="cpu", progress=False)
    reference = _arrays(full)

    # delete a shard: only that shard is recomputed, the others are kept untouched
    kept = (full / "shard-00000.npz").stat().st_mtime_ns
    (full / "shard-00001.npz").unlink()
    index = extract(cfg, "gen", "vfm:dino_b8", full / "index.json", device="cpu", progress=False)
    assert index["throughput"]["images"] == 3
    assert (full / "shard-00000.npz").stat().st_mtime_ns == kept
    torch.testing.assert_close(_arrays(full), reference, atol=0, rtol=0)

    # interrupt after the first shard: no index, no partial shard under a final name; the re-run completes it
    part = tmp_path / "part"
    real_write = cache_mod._write_shard
    calls = []

    def write_then_die(path, arrays):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_write(path, arrays)

    monkeypatch.setattr(cache_mod, "_write_shard", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        extract(cfg, "gen", "vfm:dino_b8", part / "index.json", device="cpu", progress=False)
    assert sorted(p.name for p in part.iterdir()) == ["shard-00000.npz"]
    monkeypatch.setattr(cache_mod, "_write_shard", real_write)
    index = extract(cfg, "gen", "vfm:dino_b8", part / "index.json", device="cpu", progress=False)
    assert index["throughput"]["images"] == N_IMAGES - 3
    torch.testing.assert_close(_arrays(part), reference, atol=0, rtol=0)


def test_changed_teacher_config_recomputes_stale_shards(image_root, tmp_path):
    extract(_cfg(image_root), "gen", "vfm:dino_b8", tmp_path / "index.json", device="cpu", progress=False)
    before = _arrays(tmp_path)
    index = extract(config.load(overrides={**_overrides(image_root), "seed": 5}), "gen", "vfm:dino_b8",
                    tmp_path / "index.json", device="cpu", progress=False)
    assert index["throughput"]["images"] == N_IMAGES
    assert not torch.allclose(_arrays(tmp_path), before)


def _overrides(image_root):
    return {"datasets": {"gen": {"kind": "manual", "root": str(image_root), "split": "train"}},
            "teachers": {"shard_size": 3, "batch_size": 2, "num_workers": 0, "tiny_weights": None}}


def test_sd_affinity_cache_dense_and_topk(image_root, tmp_path):
    cfg = _cfg(image_root)
    online = OnlineTeacher(cfg, "sd", device="cpu").get(_images(image_root))
    assert online.shape == (N_IMAGES, 144, 144)

    extract(cfg, "gen", "sd", tmp_path / "dense" / "index.json", device="cpu", progress=False)
    dense = TeacherCache(tmp_path / "dense" / "index.json", max_open=1)  # LRU of one handle, reads across shards
    assert dense.kind == "affinity"
    torch.testing.assert_close(dense.get(["000005", "000001"]), online[[5, 1]], atol=1e-5, rtol=2e-3)

    k = 20
    topk_cfg = _cfg(image_root, sd={**cfg["teachers"]["sd"], "cache_topk": k})
    index = extract(topk_cfg, "gen", "sd", tmp_path / "topk" / "index.json", device="cpu", progress=False)
    assert index["storage"] == {"format": "topk", "topk": k, "dtype": "float16"}
    got = TeacherCache(tmp_path / "topk" / "index.json").get(["000002"])[0]
    values, indices = torch.topk(online[2], k, dim=-1)
    expected = torch.zeros_like(online[2]).scatter_(-1, indices, values)
    expected = expected / expected.sum(-1, keepdim=True)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=2e-3)
    kept = values.sum(-1)
    assert index["retained_mass"]["min"] <= kept.min().item() + 1e-3
    assert 0 < index["retained_mass"]["mean"] <= 1.0 + 1e-3


def test_dense_from_topk_renormalises_rows():
    out = dense_from_topk(np.array([[3.0, 1.0]]), np.array([[2, 0]], dtype=np.int16), 4)
    torch.testing.assert_close(out, torch.tensor([[0.25, 0.0, 0.75, 0.0]]))


def test_user_errors_name_the_fix(image_root, tmp_path):
    cfg = _cfg(image_root)
    with pytest.raises(UserFacingError, match="vfm:dinov2_b"):
        extract(cfg, "gen", "vfm:nope", tmp_path / "index.json")
    with pytest.raises(UserFacingError, match="allowed values"):
        extract(cfg, "nope", "sd", tmp_path / "index.json")
    with pytest.raises(UserFacingError, match="declip teachers"):
        TeacherCache(tmp_path / "missing.json")
