"""The distillation trainer on a tiny CLIP and a handful of synthetic images (CPU, deterministic)."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from declip.config import load, variant_method
from declip.distill import data as D
from declip.distill import trainer as T
from declip.errors import UserFacingError

TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 8, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1, "mlp_ratio": 2.0},
}
TINY_VFM = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
            "num_register_tokens": 2}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models on a shared CPU: more threads only add contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world(one_thread, tmp_path_factory):
    """8 synthetic images (two aspect ratios), a saved tiny CLIP and a config that trains 6 steps."""
    from declip.models.clip import create_clip, save_clip

    root = tmp_path_factory.mktemp("distill")
    rng = np.random.default_rng(0)
    (root / "images").mkdir()
    for i in range(8):
        h, w = (40, 32) if i % 2 else (32, 40)
        img = np.zeros((h, w, 3), np.uint8)
        for _ in range(3):  # a few coloured rectangles: structure for the teachers to agree on
            y, x = rng.integers(0, h - 8), rng.integers(0, w - 8)
            img[y:y + rng.integers(6, 16), x:x + rng.integers(6, 16)] = rng.integers(0, 256, 3)
        Image.fromarray(img).save(root / "images" / f"{i:06d}.png")
    cfg = load(overrides={
        "student": {"model": "declip-test-vit", "custom_config": TINY_CLIP, "checkpoint": str(root / "clip.pt"),
                    "checkpoint_format": "open_clip", "image_size": 32, "crop_size": 16},
        "teachers": {"cache_mode": "online", "tiny_weights": None,
                     "vfms": {"dinov2_b": {"type": "dinov2_reg", "patch_size": 8, "tiny": TINY_VFM}}},
        "datasets": {"testset": {"kind": "mini2d", "root": str(root / "images")}},
        "distill": {"dataset": "testset", "batch_size": 4, "per_device_batch": 2, "max_steps": 6, "warmup_steps": 2,
                    "lr": 1e-3, "checkpoint_every": 2, "log_every": 1, "num_workers": 0, "crop_target_cache": False},
    })
    torch.manual_seed(0)
    save_clip(create_clip(cfg["student"]), root / "clip.pt")
    from declip.data.images import list_images

    return {"root": root, "cfg": cfg, "items": list_images(cfg["datasets"]["testset"])}


def _run(world, out, variant="no_sdgsc", **kw):
    cfg = world["cfg"]
    return T.distill(cfg, variant_method(cfg, variant), variant, world["items"], out / "model.pt", **kw)


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# --------------------------------------------------------------------------------------- helpers
def test_param_groups_decay_only_matrices(world):
    from declip.models.clip import create_clip
    from declip.models.dense import set_trainable

    clip = create_clip(world["cfg"]["student"])
    set_trainable(clip, None, "qq", "q")
    decay, no_decay = T.param_groups(clip, 0.1)
    names = {id(p): n for n, p in clip.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    decay_names = {names[id(p)] for p in decay["params"]}
    flat_names = {names[id(p)] for p in no_decay["params"]}
    assert "visual.transformer.resblocks.0.attn.in_proj_weight" in decay_names
    assert "visual.transformer.resblocks.0.mlp.c_fc.weight" in decay_names
    assert "visual.transformer.resblocks.0.ln_1.weight" in flat_names
    assert "visual.transformer.resblocks.0.attn.in_proj_bias" in flat_names
    assert all(p.ndim >= 2 for p in decay["params"])
    # Frozen parameters (text tower, projection, last-block FFN in q-q mode) are in no group.
    grouped = decay_names | flat_names
    assert grouped == {n for n, p in clip.named_parameters() if p.requires_grad}
    assert not any(n.startswith("transformer.") or n == "visual.proj" for n in grouped)
    assert "visual.transformer.resblocks.1.mlp.c_fc.weight" not in grouped  # last block's FFN is unused in q-q


def test_lr_schedule_warmup_then_cosine_to_zero():
    f = [T.lr_factor(s, total=10, warmup=2) for s in range(10)]
    assert f[0] == pytest.approx(0.5) and f[1] == pytest.approx(1.0)
    # Cosine over the 8 post-warm-up iterations: 0.5 * (1 + cos(pi * k / 8)).
    for k in range(8):
        assert f[2 + k] == pytest.approx(0.5 * (1 + math.cos(math.pi * k / 8)))
    assert T.lr_factor(10, total=10, warmup=2) == pytest.approx(0.0, abs=1e-12)
    assert T.lr_factor(7, total=10, warmup=2, schedule="constant") == 1.0


def test_weight_ensemble_formula():
    s = {"w": torch.tensor([1.0, 3.0]), "n": torch.tensor([7])}
    o = {"w": torch.tensor([5.0, -1.0]), "n": torch.tensor([9])}
    e = T.weight_ensemble(s, o, 0.7)
    torch.testing.assert_close(e["w"], torch.tensor([0.7 * 1 + 0.3 * 5, 0.7 * 3 + 0.3 * -1]))
    assert e["n"].tolist() == [7]  # integer buffers are not averaged


def test_data_order_is_epoch_permutations_split_across_ranks():
    steps = [D.step_indices(10, 4, seed=0, step=s) for s in range(5)]  # 20 images = 2 epochs of 10
    flat = sum(steps, [])
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    assert flat[:10] != flat[10:]  # a new permutation per epoch
    assert steps == [D.step_indices(10, 4, seed=0, step=s) for s in range(5)]
    assert D.step_indices(10, 4, seed=1, step=0) != steps[0]
    # Two ranks x micro-batch 1 x accumulation 2 together see exactly the single-process batch.
    one = list(D.StepBatchSampler(10, 4, 4, 0, 2, 3))
    r0 = list(D.StepBatchSampler(10, 4, 1, 0, 2, 3, rank=0, world_size=2))
    r1 = list(D.StepBatchSampler(10, 4, 1, 0, 2, 3, rank=1, world_size=2))
    assert sorted(sum(r0 + r1, [])) == sorted(one[0])
    assert D.total_steps(6, 118_287, 16, None) == math.ceil(6 * 118_287 / 16)
    assert D.total_steps(6, 512, 16, 40) == 40


# ------------------------------------------------------------------------------------- training
def test_short_distillation_loss_falls(world, tmp_path):
    cfg = dict(world["cfg"], distill=dict(world["cfg"]["distill"], max_steps=12))
    out = tmp_path / "run"
    result = T.distill(cfg, variant_method(cfg, "no_sdgsc"), "no_sdgsc", world["items"], out / "model.pt")
    recs = _records(out / "losses.jsonl")
    assert [r["step"] for r in recs] == list(range(1, 13))
    assert set(recs[0]) >= {"step", "lr", "loss", "loss_self", "loss_rcc", "loss_context", "images_per_s"}
    first, last = np.mean([r["loss"] for r in recs[:2]]), np.mean([r["loss"] for r in recs[-2:]])
    assert last < 0.8 * first
    for r in recs:
        assert r["loss"] == pytest.approx(r["loss_self"] + r["loss_rcc"] + 0.25 * r["loss_context"], rel=1e-5)
    assert result["metrics"]["loss"] == recs[-1]["loss"]
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["variant"] == "no_sdgsc" and prov["steps"] == 12 and prov["config_hash"]
    assert not list((out / "state").glob("*.pt"))  # finished runs leave no resumable state


def test_saved_model_is_the_weight_space_ensemble(world, tmp_path):
    from declip.models.clip import load_clip, load_state_dict

    captured = {}

    def grab(step, terms):
        if step == 6:  # the student after its last step, before the ensemble
            captured.update({k: v.clone() for k, v in grab.clip.state_dict().items()})

    orig_build = T.build_models

    def spy(*a, **k):
        out = orig_build(*a, **k)
        grab.clip = out[0]
        return out

    T.build_models = spy
    try:
        _run(world, tmp_path, on_step_end=grab)
    finally:
        T.build_models = orig_build
    saved = load_state_dict(tmp_path / "model.pt")
    original = load_clip(world["cfg"]["student"]).state_dict()
    a = 0.7
    key = "visual.transformer.resblocks.0.attn.in_proj_weight"
    torch.testing.assert_close(saved[key], a * captured[key] + (1 - a) * original[key])
    assert not torch.equal(saved[key], original[key])
    assert torch.equal(saved["visual.proj"], original["visual.proj"])  # frozen weights are unchanged
    # q-q with Q context never reads the last block's K rows; weight decay must not shrink them either.
    last = "visual.transformer.resblocks.1.attn.in_proj_weight"
    width = saved[last].shape[0] // 3
    assert torch.equal(captured[last][width:2 * width], original[last][width:2 * width])
    assert not torch.equal(captured[last][:width], original[last][:width])


def test_kill_and_resume_is_bit_identical(world, tmp_path):
    _run(world, tmp_path / "full")

    class Killed(Exception):
        pass

    def kill(step, terms):
        if step == 3:  # after the step-2 checkpoint, before the step-4 one
            raise Killed

    with pytest.raises(Killed):
        _run(world, tmp_path / "resumed", on_step_end=kill)
    assert [p.name for p in (tmp_path / "resumed" / "state").glob("*.pt")] == ["step-000000002.pt"]
    result = _run(world, tmp_path / "resumed")
    a = torch.load(tmp_path / "full" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda recs: [{k: v for k, v in r.items() if k != "images_per_s"} for r in recs]  # noqa: E731
    assert strip(_records(tmp_path / "full" / "losses.jsonl")) == strip(_records(tmp_path / "resumed" / "losses.jsonl"))
    assert json.loads((tmp_path / "resumed" / "provenance.json").read_text())["resumed_from_step"] == 2
    assert result["steps"] == 6


def test_grad_checkpointing_gives_the_same_weights(world, tmp_path):
    cfg = world["cfg"]
    m = variant_method(cfg, "no_sdgsc")
    for name, flag in (("plain", False), ("ckpt", True)):
        c = dict(cfg, distill=dict(cfg["distill"], max_steps=2, grad_checkpointing=flag))
        T.distill(c, m, "no_sdgsc", world["items"], tmp_path / name / "model.pt")
    a = torch.load(tmp_path / "plain" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "ckpt" / "model.pt", weights_only=True)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_crop_target_memo_is_shared_and_bit_identical(world, tmp_path, monkeypatch):
    """Variants of one seed share the crop targets; a run reading them gives the weights of a run computing them."""
    from declip.distill import crop_memo

    monkeypatch.chdir(tmp_path)  # paths.cache is relative to the working directory
    cfg = world["cfg"]
    short = dict(cfg["distill"], max_steps=2)
    memo_cfg = dict(cfg, distill=dict(short, crop_target_cache=True))
    counts = []
    real_call = crop_memo.CropTargetMemo.__call__

    def counting(self, *a, **kw):
        out = real_call(self, *a, **kw)
        counts.append((self.hits, self.misses))
        return out

    monkeypatch.setattr(crop_memo.CropTargetMemo, "__call__", counting)
    T.distill(dict(cfg, distill=short), variant_method(cfg, "no_sdgsc"), "no_sdgsc", world["items"], tmp_path / "plain" / "model.pt")
    assert counts == []  # off: no memo
    T.distill(memo_cfg, variant_method(cfg, "no_sdgsc"), "no_sdgsc", world["items"], tmp_path / "first" / "model.pt")
    first = counts[-1]
    entries = sorted((tmp_path / "cache" / "crop_targets").glob("*.pt"))
    assert first[0] == 0 and first[1] == len(entries) > 0
    T.distill(memo_cfg, variant_method(cfg, "no_rcc"), "no_rcc", world["items"], tmp_path / "other" / "model.pt")
    assert counts[-1] == (len(entries), 0)  # another variant of the same seed reads every entry
    T.distill(memo_cfg, variant_method(cfg, "no_sdgsc"), "no_sdgsc", world["items"], tmp_path / "second" / "model.pt")
    a = torch.load(tmp_path / "plain" / "model.pt", weights_only=True)
    for run in ("first", "second"):
        b = torch.load(tmp_path / run / "model.pt", weights_only=True)
        assert all(torch.equal(a[k], b[k]) for k in a)
    reseeded = dict(memo_cfg, seed=memo_cfg["seed"] + 1)
    T.distill(reseeded, variant_method(cfg, "no_sdgsc"), "no_sdgsc", world["items"], tmp_path / "seed" / "model.pt")
    assert counts[-1][1] > 0  # other regions, other keys


def test_crop_memo_key_follows_pixels_boxes_and_teacher(tmp_path):
    from declip.distill.crop_memo import CropTargetMemo

    torch.manual_seed(0)
    teacher = torch.nn.Linear(3, 2)
    memo = CropTargetMemo(tmp_path, teacher, {"crop_size": 16})
    img, box = torch.rand(3, 8, 8), torch.tensor([[0.0, 0.0, 4.0, 4.0]], dtype=torch.float64)
    key = memo.key([img], [box])
    assert memo.key([img.clone()], [box.clone()]) == key
    img2 = img.clone()
    img2[0, 0, 0] += 1e-6
    assert memo.key([img2], [box]) != key
    assert memo.key([img], [box + 0.5]) != key
    with torch.no_grad():
        teacher.weight[0, 0] += 1e-3
    assert CropTargetMemo(tmp_path, teacher, {"crop_size": 16}).key([img], [box]) != key
    assert CropTargetMemo(tmp_path, torch.nn.Linear(3, 2), {"crop_size": 32}).key([img], [box]) != key
    calls = []
    out = memo([img], [box], lambda: calls.append(1) or torch.arange(4.0))
    again = memo([img], [box], lambda: calls.append(1) or torch.zeros(4))
    assert calls == [1] and torch.equal(out, again)


def test_non_finite_loss_is_a_clear_error(world, tmp_path, monkeypatch):
    import declip.distill.losses as L

    real = L.crop_targets
    monkeypatch.setattr(L, "crop_targets", lambda *a, **k: real(*a, **k) * float("nan"))
    with pytest.raises(UserFacingError, match=r"non-finite loss at step 1: loss=nan, loss_self=nan, loss_rcc=.*loss_context="):
        _run(world, tmp_path)


def test_untrainable_and_inconsistent_variants_are_refused(world, tmp_path):
    with pytest.raises(UserFacingError, match="train: false"):
        _run(world, tmp_path, variant="clip")
    cfg = world["cfg"]
    bad = dict(variant_method(cfg, "clipself"), context_loss="kl")
    with pytest.raises(UserFacingError, match="no X_context"):
        T.distill(cfg, bad, "bad", world["items"], tmp_path / "model.pt")


def test_clipself_trains_with_the_value_path_and_no_teacher(world, tmp_path):
    _run(world, tmp_path, variant="clipself")
    recs = _records(tmp_path / "losses.jsonl")
    assert recs  # an empty log would make the check below vacuous
    assert all(r["loss_context"] == 0 and r["loss_rcc"] == 0 and r["loss"] == r["loss_self"] for r in recs)


def test_cached_teachers_match_online(world, tmp_path):
    """Integration with the real teacher cache: a cached run equals the online run up to fp16 storage."""
    from declip.distill.cache import extract

    cfg = world["cfg"]
    index = tmp_path / "cache" / "index.json"
    extract(cfg, "testset", "vfm:dinov2_b", index, device="cpu", progress=False)
    cached = dict(cfg, teachers=dict(cfg["teachers"], cache_mode="cached"))
    short = dict(cfg["distill"], max_steps=2)
    m = variant_method(cfg, "no_sdgsc")
    T.distill(dict(cached, distill=short), m, "no_sdgsc", world["items"], tmp_path / "c" / "model.pt",
              teacher_indexes=[index])
    T.distill(dict(cfg, distill=short), m, "no_sdgsc", world["items"], tmp_path / "o" / "model.pt")
    rc, ro = _records(tmp_path / "c" / "losses.jsonl"), _records(tmp_path / "o" / "losses.jsonl")
    for a, b in zip(rc, ro):
        assert a["loss_self"] == pytest.approx(b["loss_self"], rel=1e-6)  # crops do not depend on the cache
        assert a["loss_context"] == pytest.approx(b["loss_context"], rel=2e-2)
    with pytest.raises(UserFacingError, match="needs VFM 'dinov2_b' tokens"):
        T.distill(dict(cached, distill=short), m, "no_sdgsc", world["items"], tmp_path / "x" / "model.pt")


def test_declip_variant_reads_vfm_and_sd_caches(world, tmp_path):
    """The full journal recipe (RCC + KL context on the SD-GSC similarity) from real cache files."""
    from declip.distill.cache import extract

    cfg = world["cfg"]
    cfg = dict(cfg, teachers=dict(cfg["teachers"], cache_mode="cached"), distill=dict(cfg["distill"], max_steps=2))
    vfm, sd = tmp_path / "vfm" / "index.json", tmp_path / "sd" / "index.json"
    extract(cfg, "testset", "vfm:dinov2_b", vfm, device="cpu", progress=False)
    extract(cfg, "testset", "sd", sd, device="cpu", progress=False)
    T.distill(cfg, variant_method(cfg, "declip"), "declip", world["items"], tmp_path / "a" / "model.pt",
              teacher_indexes=[vfm, sd])
    T.distill(cfg, variant_method(cfg, "no_sdgsc"), "no_sdgsc", world["items"], tmp_path / "b" / "model.pt",
              teacher_indexes=[vfm])
    with_sd, without = _records(tmp_path / "a" / "losses.jsonl"), _records(tmp_path / "b" / "losses.jsonl")
    assert with_sd[0]["loss_self"] == without[0]["loss_self"] and with_sd[0]["loss_rcc"] == without[0]["loss_rcc"]
    assert with_sd[0]["loss_context"] != pytest.approx(without[0]["loss_context"], rel=1e-3)
    with pytest.raises(UserFacingError, match="needs SD affinities"):
        T.distill(cfg, variant_method(cfg, "declip"), "declip", world["items"], tmp_path / "c" / "model.pt",
                  teacher_indexes=[vfm])


def test_cli_distill_end_to_end(world, tmp_path):
    import yaml

    from declip.cli import main

    cfgfile = tmp_path / "test.yaml"
    over = {k: world["cfg"][k] for k in ("student", "teachers", "datasets")}
    over["distill"] = dict(world["cfg"]["distill"], max_steps=2)
    cfgfile.write_text(yaml.safe_dump(over))
    out = tmp_path / "results" / "distill" / "declip_cvpr" / "model.pt"
    rc = main(["distill", "--configfile", str(cfgfile), "--variant", "declip_cvpr", "--data", str(world["root"] / "images"),
               "--out", str(out), "--threads", "1", "--device", "cpu"])
    assert rc == 0
    from declip.models.clip import load_clip

    load_clip(world["cfg"]["student"], checkpoint=out)  # loadable in open_clip layout
    prov = json.loads((out.parent / "provenance.json").read_text())
    assert prov["variant"] == "declip_cvpr" and prov["dataset"]["images"] == 8
    assert len(_records(out.parent / "losses.jsonl")) == 2


# ------------------------------------------------------------------------------------------ bench
def test_bench_distill_times_every_phase(world):
    from declip.distill.bench import bench_distill, format_report, peak_tflops

    r = bench_distill(world["cfg"], variant="no_sdgsc", steps=2, warmup=1, device="cpu")
    assert set(r["split_s_per_step"]) == {"data", "teacher_crops", "vfm", "student", "optimizer"}
    assert r["images_per_s"] == pytest.approx(2 * 4 / r["seconds"])
    assert r["flops_per_step"] > 0
    assert "images/s" in format_report(r)
    assert peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == (989.5, "H100 SXM")
    assert peak_tflops("NVIDIA H100 PCIe", "bf16") == (756.5, "H100 PCIe")
    assert peak_tflops("NVIDIA H200", "fp16") == (989.5, "H200 SXM")
    assert peak_tflops("NVIDIA H200 NVL", "fp32") == (60.0, "H200 NVL")
    assert peak_tflops("NVIDIA A100-SXM4-80GB", "bf16") == (None, None)
