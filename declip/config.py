"""Configuration: loading, validation against the schema (filling defaults), variants, job slices.

Used by the Snakefile at parse time, so it imports only yaml and jsonschema.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import yaml

# What the package needs to run ships with it (declip/resources: in a checkout, links to
# workflow/schemas/config.schema.yaml and config.yaml; in a wheel, copies).
RESOURCES = Path(__file__).resolve().parent / "resources"
SCHEMA_PATH = RESOURCES / "config.schema.yaml"
DEFAULT_CONFIG = RESOURCES / "config.yaml"
# The package's source checkout: for the tests and developer tools only. What a run owns (tracking
# database, artifacts, manifests, the commit tag) follows the run's folder: `workflow_dir()`, the cwd.
ROOT = Path(__file__).resolve().parent.parent
WORKFLOW_DIR_ENV = "DECLIP_WORKFLOW_DIR"


class ConfigError(ValueError):
    """An invalid configuration; the message names the key and what is allowed."""


def deep_merge(base: dict, override: dict) -> dict:
    """Recursive dict update, the way Snakemake merges --configfile/--config onto config.yaml."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_yaml(stream):
    """yaml.safe_load through libyaml when PyYAML has it (the same documents, ~10x faster: every job and
    every Snakefile parse reads the schema, about 0.7 CPU-s in pure Python)."""
    return yaml.load(stream, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def load_schema() -> dict:
    """The config schema (a private copy: callers may fill or edit it)."""
    return copy.deepcopy(_parsed_schema())


@functools.cache
def _parsed_schema() -> dict:
    with open(SCHEMA_PATH) as f:  # parsed once per process: every `declip` call builds its parser from it
        return read_yaml(f)


def _fill_defaults(schema: dict, instance: Any) -> None:
    """Fill `default`s depth-first (objects with `default: {}` are created, then filled)."""
    if not isinstance(instance, dict) or schema.get("type") not in ("object", None):
        return
    for key, sub in schema.get("properties", {}).items():
        if key not in instance and "default" in sub:
            instance[key] = copy.deepcopy(sub["default"])
        if key in instance:
            _fill_defaults(sub, instance[key])
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for key, value in instance.items():
            if key not in schema.get("properties", {}):
                _fill_defaults(extra, value)


def _types(schema: dict) -> set:
    t = schema.get("type", [])
    return set([t] if isinstance(t, str) else t)


def _coerce_strings(schema: dict, instance):
    """Snakemake's `--config key={nested: yaml}` hands nested scalars over as strings ('16', 'true');
    read them as YAML where the schema wants a number, boolean or null, so such overrides just work."""
    if isinstance(instance, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, value in instance.items():
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            if sub is not None:
                instance[key] = _coerce_strings(sub, value)
        return instance
    if isinstance(instance, list) and isinstance(schema.get("items"), dict):
        return [_coerce_strings(schema["items"], v) for v in instance]
    wanted = _types(schema) & {"integer", "number", "boolean", "null"}
    if isinstance(instance, str) and wanted and "string" not in _types(schema):
        parsed = yaml.safe_load(instance)
        kinds = {"integer": int, "number": (int, float), "boolean": bool, "null": type(None)}
        if any(isinstance(parsed, kinds[k]) and not (k != "boolean" and isinstance(parsed, bool)) for k in wanted):
            return parsed
    return instance


def _format_error(err) -> str:
    path = ".".join(str(p) for p in err.absolute_path) or "<top level>"
    sub = err.schema if isinstance(err.schema, dict) else {}
    if err.validator == "enum":
        allowed = ", ".join(repr(v) for v in sub.get("enum", []))
        return f"config key `{path}`: {err.instance!r} is not allowed; allowed values: {allowed}"
    if err.validator == "additionalProperties":
        allowed = ", ".join(sorted(sub.get("properties", {})))
        return f"config key `{path}`: {err.message}; allowed keys: {allowed}"
    hint = f" ({sub['description']})" if sub.get("description") else ""
    return f"config key `{path}`: {err.message}{hint}"


def validate(config: dict) -> dict:
    """Validate in place against the schema, filling defaults; raise ConfigError naming the key."""
    import jsonschema

    schema = load_schema()
    _coerce_strings(schema, config)
    for preset in (config.get("variant_presets") or {}).values():  # `--config 'variant_presets={v: {k: 3}}'`
        if isinstance(preset, dict):
            _coerce_strings(schema["properties"]["method"], preset)
    _fill_defaults(schema, config)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(_format_error(e) for e in errors[:10]))
    _check_references(config, schema)
    return config


def _check_references(config: dict, schema: dict) -> None:
    """Cross-key checks the JSON schema cannot express."""
    import jsonschema

    problems = []
    presets = config["variant_presets"]
    lists = {"variants": config["variants"], "tables.table2_variants": config["tables"]["table2_variants"],
             "evaluate.ov6dpe.variants": config["evaluate"]["ov6dpe"]["variants"],
             "tables.figure_variants": config["tables"]["figure_variants"],
             "tables.ovvis_variants": config["tables"]["ovvis_variants"],
             "tables.ovd_variants": config["tables"]["ovd_variants"],
             "evaluate.ovss.variants": config["evaluate"]["ovss"]["variants"],
             "seed_variants": config.get("seed_variants", [])}

    for key, names in lists.items():
        for name in names:
            if name not in presets:
                problems.append(f"config key `{key}`: {name!r} is not a variant preset; "
                                f"allowed values: {', '.join(sorted(presets))}")
    method_schema = schema["properties"]["method"]
    for name in presets:
        try:
            method = variant_method(config, name)
        except ConfigError as e:
            problems.append(str(e))
            continue
        if method["vfm"] not in config["teachers"]["vfms"]:
            problems.append(
                f"config key `variant_presets.{name}.vfm` (or `method.vfm`): {method['vfm']!r} is not a teacher; "
                f"allowed values: {', '.join(sorted(config['teachers']['vfms']))}"
            )
        for err in jsonschema.Draft202012Validator(method_schema).iter_errors(method):
            problems.append(_format_error(err).replace("config key `", f"config key `variant_presets.{name}.", 1))
    datasets = config["datasets"]
    refs = [("distill.dataset", config["distill"]["dataset"]),
            ("evaluate.regionclf.dataset", config["evaluate"]["regionclf"]["dataset"]),
            ("evaluate.ov3d.dataset", config["evaluate"]["ov3d"]["dataset"]),
            ("evaluate.ov6dpe.dataset", config["evaluate"]["ov6dpe"]["dataset"]),
            ("evaluate.ovd.dataset", config["evaluate"]["ovd"]["dataset"]),
            ("evaluate.ovd.train_dataset", config["evaluate"]["ovd"]["train_dataset"])]
    refs += [("evaluate.ov6dpe.datasets", b) for b in config["evaluate"]["ov6dpe"]["datasets"]]
    refs += [("evaluate.tfseg.benchmarks", b) for b in config["evaluate"]["tfseg"]["benchmarks"]]
    refs += [("evaluate.ovvis.benchmarks", b) for b in config["evaluate"]["ovvis"]["benchmarks"]]
    refs += [("evaluate.ovss.train_dataset", config["evaluate"]["ovss"]["train_dataset"])]
    refs += [("evaluate.ovss.benchmarks", b) for b in config["evaluate"]["ovss"]["benchmarks"]]
    for key, name in refs:
        if name not in datasets:
            problems.append(f"config key `{key}`: {name!r} is not in `datasets`; allowed values: {', '.join(sorted(datasets))}")
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))


# Image-tower depth of the students the presets name (open_clip configs); the mini CLIP's is in its config.
_VISION_LAYERS = {"EVA02-B-16": 12, "EVA02-L-14": 24, "EVA02-L-14-336": 24, "ViT-B-16": 12, "ViT-L-14": 24,
                  "ViT-L-14-336": 24}


def check_variants_fit_student(config: dict) -> None:
    """Variants of the run (`variants`, the tables' and figures' lists) that the student cannot train, caught
    when the workflow starts rather than when distillation does: `trainable_blocks` beyond its depth."""
    student = config["student"]
    layers = ((student.get("custom_config") or {}).get("vision_cfg") or {}).get("layers") or _VISION_LAYERS.get(student["model"])
    if not layers:
        return
    problems = []
    tables = config["tables"]
    for name in dict.fromkeys([*config["variants"], *tables["table2_variants"], *tables["figure_variants"]]):
        blocks = variant_method(config, name)["trainable_blocks"]
        if blocks is not None and blocks > layers:
            problems.append(f"config key `variant_presets.{name}.trainable_blocks` (or `method.trainable_blocks`): {blocks} "
                            f"but the student {student['model']} has {layers} image blocks; allowed values: 1..{layers} or null")
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))


def load(*configfiles: str | os.PathLike, overrides: dict | None = None) -> dict:
    """config.yaml, then each configfile, then overrides, merged and validated (as the Snakefile does)."""
    with open(DEFAULT_CONFIG) as f:
        config = read_yaml(f)
    for path in configfiles:
        with open(path) as f:
            config = deep_merge(config, read_yaml(f) or {})
    if overrides:
        config = deep_merge(config, overrides)
    return validate(config)


_SEED_SUFFIX = re.compile(r"^(?P<base>.+)-seed(?P<seed>[0-9]+)$")


def split_seed(variant: str) -> tuple[str, int | None]:
    """`declip-seed1` -> ("declip", 1): a variant run again with another distillation seed; else (variant, None)."""
    m = _SEED_SUFFIX.match(variant)
    return (m["base"], int(m["seed"])) if m else (variant, None)


def seed_runs(config: dict) -> list[str]:
    """The extra seed runs of the claims table: `<v>-seed<s>` for v in `seed_variants`, s in `seeds` but `seed`."""
    return [f"{v}-seed{s}" for v in config.get("seed_variants", []) for s in config.get("seeds", []) if s != config["seed"]]


def variant_method(config: dict, variant: str) -> dict:
    """The `method` section with a variant preset applied (a seed run `<v>-seed<s>` has v's method)."""
    presets = config.get("variant_presets", {})
    variant = split_seed(variant)[0]
    if variant not in presets:
        raise ConfigError(f"unknown variant {variant!r}; allowed values: {', '.join(sorted(presets))}")
    method = dict(config["method"])
    unknown = set(presets[variant]) - set(method)
    if unknown:
        raise ConfigError(
            f"config key `variant_presets.{variant}`: unknown method keys {sorted(unknown)}; allowed keys: {', '.join(sorted(method))}"
        )
    method.update(presets[variant])
    return method


def canonical_variant(config: dict, variant: str) -> str:
    """The first variant (in `variants`, then `variant_presets` order) whose resolved method equals this
    one's. Variants that are the same recipe under two names (e.g. `vfm_dinov2_b` and `declip_cvpr`) are
    distilled once and share the checkpoint; each is still evaluated and reported under its own name."""
    base, seed = split_seed(variant)
    if seed is not None:
        return f"{canonical_variant(config, base)}-seed{seed}"
    method = variant_method(config, variant)
    for other in list(config["variants"]) + list(config["variant_presets"]):
        if variant_method(config, other) == method:
            return other
    return variant


def workflow_dir() -> Path:
    """The checkout whose Snakefile runs this job: the Snakefile exports its folder to every job (local or
    SLURM: the job-side Snakemake parses it again); else the working directory (a `declip` call by hand).
    Never the installed package's location: two clones sharing one environment each keep their own."""
    return Path(os.environ.get(WORKFLOW_DIR_ENV) or os.getcwd()).absolute()


def export_to_jobs(config: dict, snakefile: str | os.PathLike) -> None:
    """Called by the Snakefile: its folder becomes the run's workflow_dir() (manifests, commit tag) whatever
    environment the package is installed in, and a configured tracking URI reaches jobs through the
    environment (it may hold credentials; command lines are printed and logged, so the job spec has none)."""
    os.environ[WORKFLOW_DIR_ENV] = str(Path(snakefile).resolve().parent)
    uri = (config.get("tracking") or {}).get("uri")
    if uri and not os.environ.get("MLFLOW_TRACKING_URI"):
        os.environ["MLFLOW_TRACKING_URI"] = uri


def git_sha() -> str | None:
    """The workflow checkout's HEAD commit, or None outside a git checkout (provenance and MLflow tags)."""
    import subprocess

    try:
        out = subprocess.run(["git", "-C", str(workflow_dir()), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def dataset_spec(cfg: dict, name: str, root: str | os.PathLike | None = None) -> dict:
    """A copy of `datasets.<name>`, its root replaced by `root` when given (a verb's --data)."""
    from declip.errors import UserFacingError

    if name not in cfg.get("datasets", {}):
        raise UserFacingError(f"dataset {name!r} is not in `datasets`; allowed values: {', '.join(sorted(cfg.get('datasets', {})))}")
    spec = dict(cfg["datasets"][name])
    if root:
        spec["root"] = str(root)
    return spec


def resolve_path(path: str | os.PathLike) -> Path:
    """Relative config paths are relative to the working directory, as Snakemake's are (the
    repository root by default, `--directory DIR` otherwise)."""
    return Path(path).absolute()


# Which config sections a job's verb reads: the slice is the job's MLflow params and, through
# `rerun_key`, its rerun trigger.
RULE_SECTIONS = {
    "dataset_mini2d": ["seed", "mini.world2d", "datasets"],
    "dataset_mini3d": ["seed", "mini.world3d", "datasets"],
    "dataset_mini_pose": ["seed", "mini.worldpose", "datasets"],
    "dataset_mini_video": ["seed", "mini.video", "datasets"],
    "download": [],
    "pretrain": ["seed", "mini.pretrain", "student", "datasets"],
    "teachers": ["seed", "student", "teachers", "datasets"],
    "distill": ["seed", "student", "method", "teachers", "distill", "datasets"],
    "evaluate_regionclf": ["seed", "student", "method", "evaluate", "datasets"],
    "evaluate_tfseg": ["seed", "student", "method", "evaluate", "datasets"],
    "evaluate_ov3d": ["seed", "student", "method", "evaluate", "datasets"],
    "evaluate_ov6dpe": ["seed", "student", "method", "evaluate", "datasets"],
    "table_ov6dpe": ["preset", "tables", "evaluate"],
    "evaluate_ovvis": ["seed", "student", "method", "evaluate", "datasets"],
    "ovcoco_annotations": [],
    "train_detector": ["seed", "student", "method", "evaluate.ovd", "datasets"],
    "evaluate_ovd": ["seed", "student", "method", "evaluate", "datasets"],
    "table_ovd": ["preset", "tables", "evaluate"],
    "figures": ["seed", "student", "method", "teachers", "datasets", "evaluate"],
    "pretrain_teacher": ["seed", "mini.teachers", "teachers", "student", "datasets"],
    "clip_affinity": ["seed", "mini.teachers", "student", "method", "datasets"],
    "claims": ["preset", "seed", "seeds", "seed_variants", "variants", "variant_presets", "method", "evaluate"],
    "ovss_train": ["seed", "student", "method", "evaluate.ovss", "datasets"],
    "evaluate_ovss": ["seed", "student", "method", "evaluate.ovss", "datasets"],
    "table_ovss": ["preset", "variants", "tables", "evaluate"],
    "tables": ["preset", "variants", "tables", "evaluate"],
    "table2": ["preset", "tables", "evaluate"],
    "table_ovvis": ["preset", "variants", "tables", "evaluate"],
}


def job_spec(config: dict, rule: str, wildcards: dict, outputs: list[str]) -> dict:
    """Everything a `declip <verb> --job JSON` call needs: the resolved config slice and tracking tags."""
    sections = RULE_SECTIONS.get(rule, list(config))
    cfg = {}
    for section in sections:  # "a.b" takes one sub-section
        top, _, sub = section.partition(".")
        if top in config and (not sub or sub in config[top]):
            value = copy.deepcopy(config[top][sub] if sub else config[top])
            cfg[top] = {**cfg.get(top, {}), sub: value} if sub else value
    cfg["preset"] = config["preset"]
    cfg["paths"] = copy.deepcopy(config["paths"])
    variant = wildcards.get("variant", "")
    if variant and "method" in cfg:
        cfg["method"] = variant_method(config, variant)
    if split_seed(variant)[1] is not None and "seed" in cfg:  # a seed run: only the distillation seed differs
        cfg["seed"] = split_seed(variant)[1]
    dataset = (wildcards.get("dataset") or wildcards.get("benchmark") or wildcards.get("manifest")
               or _rule_dataset(config, rule))
    key = rule + "".join(f":{k}={v}" for k, v in sorted(wildcards.items()))
    return {
        "rule": rule,
        "variant": variant,
        "dataset": dataset,
        "job_key": key,
        "preset": config["preset"],
        "outputs": list(outputs),
        "config": cfg,
        # The URI (it may hold credentials) reaches jobs through MLFLOW_TRACKING_URI, never the command line.
        "tracking": {k: v for k, v in config["tracking"].items() if k != "uri"},
    }


def rerun_key(config: dict, rule: str, wildcards: dict) -> str:
    """Hash of what a job reads, for Snakemake's params rerun trigger: its config slice, with `datasets`
    narrowed to the job's own dataset (editing another dataset's entry must not rerun it). Tracking tags
    and output paths stay out (Snakemake does not compare params that read `output`)."""
    spec = job_spec(config, rule, wildcards, [])
    cfg = spec["config"]
    if spec["dataset"] in cfg.get("datasets", {}):
        cfg["datasets"] = {spec["dataset"]: cfg["datasets"][spec["dataset"]]}
    return config_hash(cfg)


def _rule_dataset(config: dict, rule: str) -> str:
    ev = config["evaluate"]
    return {
        "dataset_mini2d": "mini2d",
        "dataset_mini3d": "mini3d",
        "dataset_mini_pose": "mini_pose",
        "dataset_mini_video": "mini_video",
        "pretrain": "mini2d",
        "teachers": config["distill"]["dataset"],
        "distill": config["distill"]["dataset"],
        "evaluate_regionclf": ev["regionclf"]["dataset"],
        "evaluate_ov3d": ev["ov3d"]["dataset"],
        "train_detector": ev["ovd"]["train_dataset"],
        "evaluate_ovd": ev["ovd"]["dataset"],
        "ovss_train": ev["ovss"]["train_dataset"],
        "figures": ev["regionclf"]["dataset"],
    }.get(rule, "")


def config_hash(cfg: dict) -> str:
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]
