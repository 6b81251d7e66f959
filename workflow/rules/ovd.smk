# Open-vocabulary object detection (protocols.md section 3): distilled backbone -> detector training on base
# classes (GPU, one job per variant; gpu > 1 runs under torchrun like distillation) -> evaluation of the
# detector and of the training-free box classification -> results/tables/ovd.csv (+ .md).

rule ovcoco_annotations:
    # OV-COCO split files derived from COCO 2017 instances (declip.data.detection.ovcoco_split).
    input:
        f"{P['data']}/.downloads/coco.json",
    output:
        f"{P['data']}/coco/annotations/ov/instances_{{split}}_{{kind}}.json",
    params:
        job=job("ovcoco_annotations"),
        conf=conf("ovcoco_annotations"),
        keep=lambda w: "base" if w.kind.startswith("seen") else "all",
        coco=lambda w, output: output[0].split("/annotations/ov/")[0],
    wildcard_constraints:
        split=r"train2017|val2017",
        kind=r"seen_2_65_cat|all_2",
    log:
        logfile("dataset/ovcoco-{split}-{kind}"),

    threads: job_threads("dataset")
    resources:
        **job_resources("dataset"),
    conda:
        ENV
    shell:
        "declip dataset --job {params.job:q} ovcoco --instances {params.coco}/annotations/instances_{wildcards.split}.json "
        "--keep {params.keep} --out {output} > {log} 2>&1"


rule train_detector:
    input:
        data=ovd_data_inputs(OVD["train_dataset"]),
        ckpt=variant_checkpoint_inputs,
    output:
        model=f"{R}/ovd/{{variant}}/detector.pt",
        losses=f"{R}/ovd/{{variant}}/losses.jsonl",
    params:
        job=job("train_detector"),
        conf=conf("train_detector"),
        ckpt=lambda w: variant_checkpoint(w.variant),
        launcher=distill_launcher,
    log:
        logfile("ovd/train-{variant}"),
    benchmark:
        "benchmarks/ovd/train-{variant}.tsv"
    threads: job_threads("evaluate")
    resources:
        gpu=lambda w: 0 if MINI else OVD["detector"]["gpus"],
        mem_mb=lambda w: 3000 if MINI else 64000,
        runtime=lambda w: 15 if MINI else 24 * 60,
    conda:
        ENV
    shell:
        "{params.launcher} detector --job {params.job:q} --variant {wildcards.variant} --checkpoint {params.ckpt} "
        "--out {output.model} --threads {threads} > {log} 2>&1"


rule evaluate_ovd:
    input:
        unpack(ovd_eval_inputs),
    output:
        metrics=f"{R}/eval/ovd/{{dataset}}/{{mode}}/{{variant}}/metrics.json",
        detections=f"{R}/eval/ovd/{{dataset}}/{{mode}}/{{variant}}/detections.json",
    params:
        job=job("evaluate_ovd"),
        conf=conf("evaluate_ovd"),
        ckpt=lambda w: variant_checkpoint(w.variant),
        root=lambda w: config["datasets"][w.dataset]["root"],
        detector=lambda w, input: f"--detector {input.detector}" if w.mode == "detector" else "",
    log:
        logfile("evaluate/ovd-{dataset}-{mode}-{variant}"),
    benchmark:
        "benchmarks/ovd/evaluate-{dataset}-{mode}-{variant}.tsv"
    threads: job_threads("evaluate")
    resources:
        **job_resources("evaluate"),
    conda:
        ENV
    shell:
        "declip evaluate --job {params.job:q} ovd --variant {wildcards.variant} --checkpoint {params.ckpt} "
        "--data {params.root} --dataset {wildcards.dataset} --mode {wildcards.mode} {params.detector} "
        "--out {output.metrics} --threads {threads} > {log} 2>&1"


rule table_ovd:
    input:
        ovd_metrics(config["tables"]["ovd_variants"]),
    output:
        csv=report(f"{R}/tables/ovd.csv", caption="../report/table.rst", category="Tables", labels={"table": "ovd"}),
        md=f"{R}/tables/ovd.md",
    params:
        job=job("table_ovd"),
        conf=conf("table_ovd"),
        metrics=lambda w: f"{R}/eval",
        out_dir=lambda w, output: os.path.dirname(output.md),
    log:
        logfile("table_ovd"),
    threads: job_threads("tables")
    resources:
        **job_resources("tables"),
    conda:
        ENV
    shell:
        "declip tables --job {params.job:q} --metrics-root {params.metrics} --out-dir {params.out_dir} --table ovd > {log} 2>&1"
