"""The `released_declip` variant: the authors' checkpoint (EVA-CLIP key layout) evaluated without distillation,
with its own dense mode and attention scale, and marked `released` in the metrics options."""

import torch

from declip.config import ROOT, load, variant_method
from declip.evaluate import text as T
from declip.models.clip import save_clip
from declip.models.convert import open_clip_to_eva_clip


def test_paper_preset_defines_the_released_variant_and_its_download():
    import yaml

    cfg = load(ROOT / "workflow/presets/paper-b16.yaml")
    m = variant_method(cfg, "released_declip")
    assert (m["train"], m["checkpoint_format"], m["dense_mode"], m["attn_scale"]) == (False, "eva-clip", "csa", "sqrt_d")
    assert "released_declip" in cfg["variants"]
    manifest = yaml.safe_load((ROOT / "workflow/manifests/weights.yaml").read_text())
    entry = next(f for f in manifest["files"] if f"{manifest['root']}/{f['path']}" == m["checkpoint"])
    assert entry["sha256"] is None  # none published: the download records the one it got (checksums.lock.json)
    assert entry["url"].startswith("https://huggingface.co/xiaomoguhzz/")


def test_released_checkpoint_loads_in_eva_clip_layout_with_its_own_options(tmp_path):
    from test_dense import _perturb, _register_tiny_eva, TEXT

    from declip.models.clip import create_clip

    _register_tiny_eva("declip_test_tiny_eva", fused=False)
    student = {"model": "declip-test-released-eva", "checkpoint": str(tmp_path / "original.pt"),
               "checkpoint_format": "open_clip",
               "custom_config": {"embed_dim": 16, "text_cfg": TEXT, "custom_text": True,
                                 "vision_cfg": {"image_size": 32, "timm_model_name": "declip_test_tiny_eva",
                                                "timm_model_pretrained": False, "timm_pool": "token", "timm_proj": None}}}
    cfg = load(overrides={"student": student})
    original = create_clip(cfg["student"])
    save_clip(original, tmp_path / "original.pt")
    released = _perturb(create_clip(cfg["student"]), seed=7)
    torch.save({"state_dict": {"module." + k: v for k, v in open_clip_to_eva_clip(released.state_dict()).items()}},
               tmp_path / "released.pt")
    cfg["method"] = dict(cfg["method"], train=False, checkpoint=str(tmp_path / "released.pt"),
                         checkpoint_format="eva-clip", dense_mode="csa", attn_scale="sqrt_d")
    cfg["evaluate"]["regionclf"]["attn_scale"] = "none"  # a per-family override
    ckpt = T.resolve_checkpoint(cfg, "released_declip")
    assert ckpt == tmp_path / "released.pt"
    model = T.load_eval_model(cfg, "released_declip", str(ckpt), torch.device("cpu"),
                              T.family_dense_mode(cfg, "tfseg"), T.family_attn_scale(cfg, "tfseg"))
    want = released.state_dict()
    got = model.clip.state_dict()
    for k in want:
        torch.testing.assert_close(got[k], want[k], msg=k)
    assert (model.dense.dense_mode, model.dense.attn_scale) == ("csa", "sqrt_d")
    assert T.family_attn_scale(cfg, "regionclf") == "none"
    opts = T.eval_options(cfg, "released_declip", model)
    assert opts["weights"] == "released" and opts["checkpoint"] == "released.pt" and opts["context_proj"] == "qk"
    # `clip` keeps the original weights even when the method section is a released variant's (figures).
    assert T.resolve_checkpoint(cfg, "clip") == tmp_path / "original.pt"
