# Evaluation: one job per family x benchmark x variant, each writing a metrics.json.

rule evaluate_regionclf:
    input:
        unpack(eval_inputs(lambda w: w.dataset)),
    output:
        f"{R}/eval/regionclf/{{dataset}}/{{variant}}/metrics.json",
    params:
        job=job("evaluate_regionclf"),
        conf=conf("evaluate_regionclf"),
        ckpt=lambda w: variant_checkpoint(w.variant),
        root=lambda w: config["datasets"][w.dataset]["root"],
    log:
        logfile("evaluate/regionclf-{dataset}-{variant}"),
    threads: job_threads("evaluate")
    resources:
        **job_resources("evaluate"),
    conda:
        ENV
    shell:
        "declip evaluate --job {params.job:q} regionclf --variant {wildcards.variant} --checkpoint {params.ckpt} "
        "--data {params.root} --dataset {wildcards.dataset} --out {output} --threads {threads} > {log} 2>&1"


rule evaluate_tfseg:
    input:
        unpack(eval_inputs(lambda w: w.benchmark)),
    output:
        f"{R}/eval/tfseg/{{benchmark}}/{{variant}}/metrics.json",
    params:
        job=job("evaluate_tfseg"),
        conf=conf("evaluate_tfseg"),
        ckpt=lambda w: variant_checkpoint(w.variant),
        root=lambda w: config["datasets"][w.benchmark]["root"],
    log:
        logfile("evaluate/tfseg-{benchmark}-{variant}"),
    threads: job_threads("evaluate")
    resources:
        **job_resources("evaluate"),
    conda:
        ENV
    shell:
        "declip evaluate --job {params.job:q} tfseg --variant {wildcards.variant} --checkpoint {params.ckpt} "
        "--data {params.root} --dataset {wildcards.benchmark} --out {output} --threads {threads} > {log} 2>&1"


rule evaluate_ov3d:
    input:
        unpack(eval_inputs(lambda w: EV["ov3d"]["dataset"])),
    output:
        f"{R}/eval/ov3d/{{host}}/{{mode}}/{{variant}}/metrics.json",
    params:
        job=job("evaluate_ov3d"),
        conf=conf("evaluate_ov3d"),
        ckpt=lambda w: variant_checkpoint(w.variant),
        root=lambda w: config["datasets"][EV["ov3d"]["dataset"]]["root"],
    log:
        logfile("evaluate/ov3d-{host}-{mode}-{variant}"),
    threads: job_threads("evaluate")
    resources:
        **job_resources("evaluate"),
    conda:
        ENV
    shell:
        "declip evaluate --job {params.job:q} ov3d --variant {wildcards.variant} --checkpoint {params.ckpt} "
        "--data {params.root} --host {wildcards.host} --mode {wildcards.mode} --out {output} --threads {threads} > {log} 2>&1"
