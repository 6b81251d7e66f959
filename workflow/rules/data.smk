# Datasets: the synthetic mini worlds, full-scale downloads (localrules: login nodes have internet),
# and the mini preset's tiny CLIP pretraining.


localrules:
    download,
    manual_dataset,


rule dataset_mini2d:
    output:
        f"{config['datasets']['mini2d']['root']}/MANIFEST.json",
    params:
        job=job("dataset_mini2d"),
        conf=conf("dataset_mini2d"),
        root=lambda w, output: os.path.dirname(output[0]),
    log:
        logfile("dataset_mini2d"),
    threads: job_threads("dataset")
    resources:
        **job_resources("dataset"),
    conda:
        ENV
    shell:
        "declip dataset --job {params.job:q} mini2d --out {params.root} > {log} 2>&1"


rule dataset_mini3d:
    output:
        f"{config['datasets']['mini3d']['root']}/MANIFEST.json",
    params:
        job=job("dataset_mini3d"),
        conf=conf("dataset_mini3d"),
        root=lambda w, output: os.path.dirname(output[0]),
    log:
        logfile("dataset_mini3d"),
    threads: job_threads("dataset")
    resources:
        **job_resources("dataset"),
    conda:
        ENV
    shell:
        "declip dataset --job {params.job:q} mini3d --out {params.root} > {log} 2>&1"


rule download:
    output:
        f"{P['data']}/.downloads/{{manifest}}.json",
    params:
        job=job("download"),
        conf=conf("download"),
    log:
        logfile("download/{manifest}"),
    threads: job_threads("download")
    resources:
        **job_resources("download"),
    conda:
        ENV
    shell:
        "declip dataset --job {params.job:q} download --dataset {wildcards.manifest} --out {output} > {log} 2>&1"


use rule download as download_weights with:
    output:
        f"{P['models']}/.downloads/{{manifest}}.json",
    log:
        logfile("download/models-{manifest}"),


rule manual_dataset:
    output:
        f"{P['data']}/.downloads/{{manifest}}.manual.json",
    params:
        job=job("download"),
        conf=conf("download"),
    log:
        logfile("download/{manifest}.manual"),
    threads: job_threads("dataset")
    resources:
        **job_resources("dataset"),
    conda:
        ENV
    shell:
        "declip dataset --job {params.job:q} download --dataset {wildcards.manifest} --out {output} > {log} 2>&1"


if MINI:

    rule pretrain:
        input:
            f"{config['datasets']['mini2d']['root']}/MANIFEST.json",
        output:
            ckpt=config["student"]["checkpoint"],
            metrics=os.path.join(os.path.dirname(config["student"]["checkpoint"]), "pretrain_metrics.json"),
        params:
            job=job("pretrain"),
            conf=conf("pretrain"),
        log:
            logfile("pretrain"),
        benchmark:
            "benchmarks/pretrain.tsv"
        threads: job_threads("pretrain")
        # The longest job, and every distillation waits for it: start it before the teachers' pretraining.
        priority: 10
        resources:
            **job_resources("pretrain"),
        conda:
            ENV
        shell:
            "declip pretrain --job {params.job:q} --data {input} --out {output.ckpt} --threads {threads} > {log} 2>&1"
