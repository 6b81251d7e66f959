# Open-vocabulary segmentation with a trained head (protocols.md section 4, CAT-Seg recipe): one head
# training job per variant (under torchrun when evaluate.ovss.gpus > 1, like distillation), one
# evaluation job per benchmark x variant, and the `ovss` table.


rule ovss_train:
    input:
        data=dataset_marker(EV["ovss"]["train_dataset"]),
        ckpt=variant_checkpoint_inputs,
        classes=ovss_class_lists,
    output:
        head=f"{R}/ovss/{{variant}}/head.pt",
        provenance=f"{R}/ovss/{{variant}}/provenance.json",
        losses=f"{R}/ovss/{{variant}}/losses.jsonl",
    params:
        job=job("ovss_train"),
        conf=conf("ovss_train"),
        launcher=distill_launcher,
        ckpt=lambda w: variant_checkpoint(w.variant),
        root=lambda w: config["datasets"][EV["ovss"]["train_dataset"]]["root"],
    log:
        logfile("ovss/train-{variant}"),
    benchmark:
        "benchmarks/ovss/train-{variant}.tsv"
    threads: job_threads("evaluate")
    resources:
        gpu=EV["ovss"]["gpus"],
        mem_mb=lambda w: 3000 if MINI else 64000,
        runtime=lambda w: 20 if MINI else 24 * 60,
    conda:
        ENV
    shell:
        "{params.launcher} evaluate --job {params.job:q} ovss-train --variant {wildcards.variant} "
        "--checkpoint {params.ckpt} --data {params.root} --out {output.head} --threads {threads} > {log} 2>&1"


rule evaluate_ovss:
    input:
        data=lambda w: dataset_marker(w.benchmark),
        head=f"{R}/ovss/{{variant}}/head.pt",
        classes=ovss_class_lists,
    output:
        f"{R}/eval/ovss/{{benchmark}}/{{variant}}/metrics.json",
    params:
        job=job("evaluate_ovss"),
        conf=conf("evaluate_ovss"),
        ckpt=lambda w: variant_checkpoint(w.variant),
        root=lambda w: config["datasets"][w.benchmark]["root"],
    log:
        logfile("evaluate/ovss-{benchmark}-{variant}"),
    threads: job_threads("evaluate")
    resources:
        **job_resources("evaluate"),
    conda:
        ENV
    shell:
        "declip evaluate --job {params.job:q} ovss --variant {wildcards.variant} --checkpoint {params.ckpt} "
        "--head {input.head} --data {params.root} --dataset {wildcards.benchmark} --out {output} "
        "--threads {threads} > {log} 2>&1"


rule table_ovss:
    input:
        ovss_metrics(EV["ovss"]["variants"]),
    output:
        csv=report(f"{R}/tables/ovss.csv", caption="../report/table.rst", category="Tables", labels={"table": "ovss"}),
        md=f"{R}/tables/ovss.md",
    params:
        job=job("table_ovss"),
        conf=conf("table_ovss"),
        metrics=lambda w: f"{R}/eval",
        out_dir=lambda w, output: os.path.dirname(output.md),
    log:
        logfile("table_ovss"),
    threads: job_threads("tables")
    resources:
        **job_resources("tables"),
    conda:
        ENV
    shell:
        "declip tables --job {params.job:q} --metrics-root {params.metrics} --out-dir {params.out_dir} --table ovss "
        "> {log} 2>&1"
