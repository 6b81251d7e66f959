# Shared helpers: config validation, job specs passed to `declip --job`, and path functions.
# Only light imports here: Snakemake re-parses this for every job.

import json

from declip.tables.registry import table_ids

from declip.config import ConfigError, canonical_variant, job_spec, rerun_key, seed_runs, validate, variant_method
from declip.config import check_variants_fit_student, export_to_jobs

try:
    validate(config)
    check_variants_fit_student(config)
except ConfigError as e:
    raise WorkflowError(f"{e}\n(fix config.yaml, your --configfile, or --config)") from None


# The run's checkout and tracking URI, exported to every job (SLURM jobs parse this file again).
export_to_jobs(config, workflow.main_snakefile)


P = config["paths"]
R = P["results"]
ENV = "../../envs/declip.yaml"
MINI = config["preset"] == "mini"
EV = config["evaluate"]


wildcard_constraints:
    variant=r"[A-Za-z0-9_.\-]+",
    dataset=r"[A-Za-z0-9_\-]+",
    benchmark=r"[A-Za-z0-9_\-]+",
    teacher=r"[A-Za-z0-9_\-]+",
    host=r"[A-Za-z0-9_\-]+",
    tracks=r"[A-Za-z0-9_\-]+",
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


def _resources(group):
    res = config["resources"]
    return {**res["default"], **res.get(group, {})}


def job_threads(group):
    """A rule's threads from `resources.<group>.threads` (the preset's): its cores and torch threads."""
    return _resources(group)["threads"]


def job_resources(group):
    """A rule's resources from the preset (`resources.<group>`) plus the site's SLURM settings
    (`cluster`: partition, account, GPU constraint, set in one place). Empty settings are left out."""
    r = _resources(group)
    gpus = config["distill"]["gpus"] if group == "distill" else r["gpus"]
    out = {"mem_mb": r["mem_mb"], "runtime": r["runtime"], "gpu": gpus}
    site = config["cluster"]
    partition = (site["gpu_partition"] or site["partition"]) if gpus else site["partition"]
    if partition:
        out["slurm_partition"] = partition
    if site["account"]:
        out["slurm_account"] = site["account"]
    if gpus and site["constraint"]:
        out["constraint"] = site["constraint"]
    return out


def dataset_marker(name):
    """The file that proves a dataset is complete: its MANIFEST (mini worlds) or its download marker."""
    spec = config["datasets"][name]
    if spec["kind"] in ("mini2d", "mini3d", "mini_pose", "mini_video"):
        return f"{spec['root']}/MANIFEST.json"
    if spec["kind"] == "manual":
        return f"{P['data']}/.downloads/{spec.get('manifest', name)}.manual.json"
    return f"{P['data']}/.downloads/{spec.get('manifest', name)}.json"


def weights_marker():
    return f"{P['models']}/.downloads/weights.json"


def clip_checkpoint_inputs():
    """What the original CLIP weights depend on: the pretrain rule (mini) or the weights download."""
    return [config["student"]["checkpoint"]] if MINI else [weights_marker()]


def teacher_inputs(wildcards):
    """Teacher models: the weights download (full scale), the pretrained tiny teacher (mini), or nothing
    (mini with teachers.tiny_weights: null = seeded random teachers)."""
    if not MINI:
        return [weights_marker()]
    folder = config["teachers"].get("tiny_weights")
    return [f"{folder}/{wildcards.teacher}.pt"] if folder else []


def variant_checkpoint(variant):
    m = variant_method(config, variant)
    if not m["train"]:  # the original weights, or released ones (method.checkpoint, from the weights download)
        return m["checkpoint"] or config["student"]["checkpoint"]
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


def ov6dpe_metrics(variants):
    return [
        f"{R}/eval/ov6dpe/{d}/{m}/{v}/metrics.json"
        for d in EV["ov6dpe"]["datasets"]
        for m in EV["ov6dpe"]["masks"]
        for v in variants
    ]
def ovvis_track_sources(benchmark):
    """The configured video track sources a benchmark has: oracle needs public GT, files a `proposals` entry."""
    spec = config["datasets"][benchmark]
    have = ({"oracle"} if spec.get("gt_public", True) else set()) | set(spec.get("proposals") or {})
    return [t for t in EV["ovvis"]["tracks"] if t in have]


def ovvis_metrics(variants):
    return [f"{R}/eval/ovvis/{b}/{t}/{v}/metrics.json" for b in EV["ovvis"]["benchmarks"]
            for t in ovvis_track_sources(b) for v in variants]
# Open-vocabulary detection (workflow/rules/ovd.smk).
OVD = EV["ovd"]


def ovd_data_inputs(name):
    """What a box dataset depends on: its marker, the derived OV-COCO annotation file, COCO images for LVIS."""
    spec = config["datasets"][name]
    inputs = [dataset_marker(name)]
    if spec.get("format") == "coco_ov":
        inputs.append(f"{spec['root']}/{spec['annotations']}")
    if spec.get("format") == "lvis":
        inputs.append(f"{P['data']}/.downloads/coco.json")
    return inputs


def ovd_metrics(variants):
    return [f"{R}/eval/ovd/{OVD['dataset']}/{m}/{v}/metrics.json" for m in OVD["modes"] for v in variants]


def ovd_eval_inputs(wildcards):
    inputs = {"data": ovd_data_inputs(wildcards.dataset), "ckpt": variant_checkpoint_inputs(wildcards)}
    if wildcards.mode == "detector":
        inputs["detector"] = f"{R}/ovd/{wildcards.variant}/detector.pt"
    return inputs
def ovss_class_lists(wildcards):
    """CAT-Seg's class lists (evaluate.ovss.class_json) come with the catseg_classes download."""
    return [f"{P['data']}/.downloads/catseg_classes.json"] if EV["ovss"]["class_json"] else []


def ovss_metrics(variants):
    return [f"{R}/eval/ovss/{b}/{v}/metrics.json" for b in EV["ovss"]["benchmarks"] for v in variants]


def figure_outputs(variants):
    return [f"{R}/figures/{v}" for v in variants]


TABLE_IDS = [t for t in table_ids() if t not in ("table2", "ov6dpe", "ovvis", "ovd", "ovss")]  # these have their own rules


def claim_variants():
    """Every variant a claim reads, with the seed runs of `seed_variants`."""
    return list(dict.fromkeys(list(config["variants"]) + list(config["seed_variants"]) + seed_runs(config)))


def mini_teacher_figures():
    """The pretrained teachers' and the CLIP's affinity figures (mini preset with pretrained teachers)."""
    folder = config["teachers"].get("tiny_weights")
    if not (MINI and folder):
        return []
    used = sorted({t for v in claim_variants() for t in variant_teachers(v)})
    return [f"{folder}/{t}.json" for t in used] + [rules.clip_affinity.output[0]]
# table2 and ovss have their own rules (their own evaluation jobs).
