# Shared helpers: config validation, job specs passed to `declip --job`, and path functions.
# Only light imports here: Snakemake re-parses this for every job.

import json

from declip.tables.registry import table_ids

from declip.config import ConfigError, canonical_variant, job_spec, rerun_key, validate, variant_method

try:
    validate(config)
except ConfigError as e:
    raise WorkflowError(f"{e}\n(fix config.yaml, your --configfile, or --config)") from None


P = config["paths"]
R = P["results"]
ENV = "../../envs/declip.yaml"
MINI = config["preset"] == "mini"
# Mini jobs are small: one thread each lets two run side by side on a 2-core laptop.
JOB_THREADS = 1 if MINI else 8
EV = config["evaluate"]


wildcard_constraints:
    variant=r"[A-Za-z0-9_.\-]+",
    dataset=r"[A-Za-z0-9_\-]+",
    benchmark=r"[A-Za-z0-9_\-]+",
    teacher=r"[A-Za-z0-9_\-]+",
    host=r"[A-Za-z0-9_\-]+",
    mode=r"[A-Za-z0-9_\-]+",
    manifest=r"[A-Za-z0-9_\-]+",


def job(rule_name):
    """params function: the JSON job spec (config slice + tracking tags) for `declip <verb> --job`."""

    def _spec(wildcards, output):
        spec = job_spec(config, rule_name, dict(wildcards.items()), [str(o) for o in output])
        return json.dumps(spec, sort_keys=True)

    return _spec


def conf(rule_name):
    """params function: hash of the job's config slice, so a changed parameter reruns the jobs that read it
    (`job` reads `output`, and such params are not compared by Snakemake)."""
    return lambda wildcards: rerun_key(config, rule_name, dict(wildcards.items()))


def dataset_marker(name):
    """The file that proves a dataset is complete: its MANIFEST (mini worlds) or its download marker."""
    spec = config["datasets"][name]
    if spec["kind"] in ("mini2d", "mini3d"):
        return f"{spec['root']}/MANIFEST.json"
    if spec["kind"] == "manual":
        return f"{P['data']}/.downloads/{spec.get('manifest', name)}.manual.json"
    return f"{P['data']}/.downloads/{spec.get('manifest', name)}.json"


def weights_marker():
    return f"{P['models']}/.downloads/weights.json"


def clip_checkpoint_inputs():
    """What the original CLIP weights depend on: the pretrain rule (mini) or the weights download."""
    return [config["student"]["checkpoint"]] if MINI else [weights_marker()]


def teacher_inputs():
    """Teacher models come from config (mini) or the weights download (full scale)."""
    return [] if MINI else [weights_marker()]


def variant_checkpoint(variant):
    if not variant_method(config, variant)["train"]:
        return config["student"]["checkpoint"]
    return f"{R}/distill/{canonical_variant(config, variant)}/model.pt"


def variant_checkpoint_inputs(wildcards):
    if not variant_method(config, wildcards.variant)["train"]:
        return clip_checkpoint_inputs()
    return [variant_checkpoint(wildcards.variant)]


def variant_teachers(variant):
    """Teacher caches a variant's losses read: the VFM (context loss or RCC) and SD (SD-GSC)."""
    m = variant_method(config, variant)
    if not m["train"]:
        return []
    names = []
    if m["context_loss"] != "none" or m["rcc"]:
        names.append(m["vfm"])
        if m["sd_gsc"] and m["context_loss"] != "none":
            names.append("sd")
    return names


def teacher_index(dataset, teacher):
    return f"{P['cache']}/teachers/{dataset}/{teacher}/index.json"


def logfile(name):
    return f"{P['logs']}/{name}.log"


def distill_launcher(wildcards, resources):
    n = int(resources.gpu)
    if n > 1:
        return f"torchrun --standalone --nproc_per_node={n} -m declip.cli"
    return "declip"


def eval_inputs(dataset_name):
    def _inputs(wildcards):
        return {"data": dataset_marker(dataset_name(wildcards)), "ckpt": variant_checkpoint_inputs(wildcards)}

    return _inputs


def regionclf_metrics(variants):
    return [f"{R}/eval/regionclf/{EV['regionclf']['dataset']}/{v}/metrics.json" for v in variants]


def tfseg_metrics(variants):
    return [f"{R}/eval/tfseg/{b}/{v}/metrics.json" for b in EV["tfseg"]["benchmarks"] for v in variants]


def ov3d_metrics(variants):
    return [f"{R}/eval/ov3d/{h}/{m}/{v}/metrics.json" for h in EV["ov3d"]["hosts"] for m in EV["ov3d"]["modes"] for v in variants]


def ovss_class_lists(wildcards):
    """CAT-Seg's class lists (evaluate.ovss.class_json) come with the catseg_classes download."""
    return [f"{P['data']}/.downloads/catseg_classes.json"] if EV["ovss"]["class_json"] else []


def ovss_metrics(variants):
    return [f"{R}/eval/ovss/{b}/{v}/metrics.json" for b in EV["ovss"]["benchmarks"] for v in variants]


def figure_outputs(variants):
    return [f"{R}/figures/{v}" for v in variants]


# table2 and ovss have their own rules (their own evaluation jobs).
TABLE_IDS = [t for t in table_ids() if t not in ("table2", "ovss")]
