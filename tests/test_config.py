"""Configuration: schema validation, defaults = paper values, presets, variants, clear errors."""

import pytest
import yaml

from declip import config as C

PRESETS = C.ROOT / "workflow" / "presets"


def test_mini_config_validates_and_fills_defaults():
    cfg = C.load()
    assert cfg["preset"] == "mini"
    # Defaults filled from the schema (paper values) where config.yaml is silent.
    assert cfg["method"]["lambda_context"] == 0.25
    assert cfg["distill"]["betas"] == [0.9, 0.999]
    assert cfg["teachers"]["sd"]["timestep"] == 100


@pytest.mark.parametrize("preset", ["paper-b16", "paper-l14"])
def test_paper_presets_are_full_scale(preset):
    cfg = C.load(PRESETS / f"{preset}.yaml")
    assert cfg["preset"] == preset
    assert cfg["student"]["custom_config"] is None
    assert cfg["student"]["image_size"] == 560
    assert all(v["tiny"] is None and v["checkpoint"] for v in cfg["teachers"]["vfms"].values())
    assert cfg["teachers"]["sd"]["tiny"] is None and cfg["teachers"]["sd"]["resolution"] == 512
    assert cfg["distill"]["dataset"] == "coco_train2017" and cfg["distill"]["max_steps"] is None
    assert len(cfg["evaluate"]["tfseg"]["benchmarks"]) == 8
    assert cfg["teachers"]["num_workers"] > 0 and cfg["distill"]["num_workers"] > 0  # mini's 0 must not leak


def test_paper_b16_method_and_optimiser_equal_schema_defaults():
    """The paper preset must not drift from the paper's values, which are the schema defaults."""
    schema = C.load_schema()
    cfg = C.load(PRESETS / "paper-b16.yaml")
    for section in ("method", "distill"):
        for key, sub in schema["properties"][section]["properties"].items():
            if key in ("dataset", "num_workers", "gpus") or "default" not in sub:
                continue
            assert cfg[section][key] == sub["default"], f"{section}.{key}"


def test_every_schema_property_has_a_description_or_is_structural():
    schema = C.load_schema()
    for section in ("student", "method", "distill"):
        for key, sub in schema["properties"][section]["properties"].items():
            assert sub.get("description"), f"{section}.{key} has no description citing its source"


def test_every_schema_property_is_a_schema_and_descriptions_are_whole():
    """An unquoted description holding a comma inside a YAML flow mapping is cut there and leaves a stray
    key with a null value; every `properties` entry must be a mapping (a sub-schema)."""
    def walk(node, where):
        if isinstance(node, dict):
            for key, sub in node.get("properties", {}).items():
                assert isinstance(sub, dict), f"{where}.{key} is {sub!r}, not a schema: quote its neighbour's description"
            for key, sub in node.items():
                walk(sub, f"{where}.{key}")
        elif isinstance(node, list):
            for i, sub in enumerate(node):
                walk(sub, f"{where}[{i}]")

    walk(C.load_schema(), "schema")
    assert "linear warm-up then cosine" in C.load_schema()["properties"]["mini"]["properties"]["teachers"]["properties"]["lr"]["description"]


def test_invalid_enum_names_key_and_allowed_values():
    with pytest.raises(C.ConfigError) as e:
        C.load(overrides={"method": {"context_loss": "cosine"}})
    msg = str(e.value)
    assert "method.context_loss" in msg and "'kl'" in msg and "'l2'" in msg


def test_unknown_key_is_rejected_with_allowed_keys():
    with pytest.raises(C.ConfigError) as e:
        C.load(overrides={"distill": {"learning_rate": 1}})
    assert "distill" in str(e.value) and "lr" in str(e.value)


def test_unknown_variant_in_variants_list():
    with pytest.raises(C.ConfigError) as e:
        C.load(overrides={"variants": ["declip", "nope"]})
    assert "'nope'" in str(e.value) and "declip_cvpr" in str(e.value)


def test_variant_preset_with_bad_value_is_rejected():
    with pytest.raises(C.ConfigError) as e:
        C.load(overrides={"variant_presets": {"bad": {"dense_mode": "xx"}}})
    assert "variant_presets.bad" in str(e.value) and "dense_mode" in str(e.value)


def test_variant_preset_with_unknown_vfm_is_rejected():
    with pytest.raises(C.ConfigError) as e:
        C.load(overrides={"variant_presets": {"v": {"vfm": "clipclip"}}})
    assert "clipclip" in str(e.value) and "dinov2_b" in str(e.value)


def test_section6_variants_exist_and_resolve():
    cfg = C.load()
    names = {"clip", "clipself", "declip_cvpr", "declip", "no_sdgsc", "no_rcc", "coupled",
             "lambda_0.1", "lambda_0.2", "lambda_0.3", "lambda_0.5", "lambda_1.0",
             "vfm_dino_b8", "vfm_dino_b16", "vfm_sam_b", "vfm_sam_l", "vfm_dinov2_b", "vfm_dinov2_l",
             "context_q", "context_k", "context_qk"}
    assert names <= set(cfg["variant_presets"])
    m = C.variant_method(cfg, "declip_cvpr")
    assert (m["dense_mode"], m["context_loss"], m["rcc"], m["sd_gsc"]) == ("qq", "l2", False, False)
    m = C.variant_method(cfg, "declip")
    assert (m["context_loss"], m["rcc"], m["sd_gsc"], m["lambda_context"]) == ("kl", True, True, 0.25)
    assert C.variant_method(cfg, "clipself")["dense_mode"] == "value"
    assert C.variant_method(cfg, "lambda_0.5")["lambda_context"] == 0.5
    assert C.variant_method(cfg, "vfm_sam_b")["vfm"] == "sam_b"
    assert C.variant_method(cfg, "coupled")["coupled"] is True
    assert not C.variant_method(cfg, "clip")["train"]


def test_identical_variants_share_one_distillation():
    cfg = C.load()
    assert C.canonical_variant(cfg, "vfm_dinov2_b") == "declip_cvpr"  # same VFM as the CVPR recipe
    assert C.canonical_variant(cfg, "context_q") == "declip"  # q is the default projection
    assert C.canonical_variant(cfg, "lambda_0.5") == "lambda_0.5"
    assert C.canonical_variant(cfg, "declip") == "declip"


def test_job_spec_slices_config_and_resolves_variant():
    cfg = C.load()
    spec = C.job_spec(cfg, "distill", {"variant": "no_rcc"}, ["results/distill/no_rcc/model.pt"])
    assert spec["job_key"] == "distill:variant=no_rcc"
    assert spec["config"]["method"]["rcc"] is False
    assert "evaluate" not in spec["config"] and "mini" not in spec["config"]
    assert spec["dataset"] == "mini2d"


def test_deep_merge_is_recursive_like_snakemake():
    merged = C.deep_merge({"a": {"b": 1, "c": 2}, "l": [1, 2]}, {"a": {"c": 3}, "l": [9]})
    assert merged == {"a": {"b": 1, "c": 3}, "l": [9]}


def test_envs_in_step_with_pyproject():
    import tomllib

    deps = tomllib.loads((C.ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((C.ROOT / "envs" / "declip.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert sorted(p for p in pip if not p.startswith("-e ")) == sorted(deps)
    assert "-e ${DECLIP_WORKFLOW_DIR}" in pip  # the suite itself, from the workflow's checkout


def test_nested_command_line_overrides_given_as_strings_are_read_as_yaml():
    """`snakemake --config mini='{pretrain: {steps: 8}}'` passes nested scalars as strings."""
    cfg = C.load(overrides={"mini": {"pretrain": {"steps": "8", "min_zero_shot_acc": "0.5"}},
                            "method": {"rcc": "false", "trainable_blocks": "null"}})
    assert cfg["mini"]["pretrain"]["steps"] == 8 and cfg["mini"]["pretrain"]["min_zero_shot_acc"] == 0.5
    assert cfg["method"]["rcc"] is False and cfg["method"]["trainable_blocks"] is None
    with pytest.raises(C.ConfigError):
        C.load(overrides={"mini": {"pretrain": {"steps": "eight"}}})
