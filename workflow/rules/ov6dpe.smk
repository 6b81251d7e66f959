# Open-vocabulary 6D pose estimation (protocols.md section 7): the mini pose world, the Oryon feature
# protocol per benchmark x mask x variant, and results/tables/ov6dpe.csv.


rule dataset_mini_pose:
    output:
        f"{config['datasets']['mini_pose']['root']}/MANIFEST.json",
    params:
        job=job("dataset_mini_pose"),
        conf=conf("dataset_mini_pose"),
        root=lambda w, output: os.path.dirname(output[0]),
    log:
        logfile("dataset_mini_pose"),
    threads: job_threads("dataset")
    resources:
        **job_resources("dataset"),
    conda:
        ENV
    shell:
        "declip dataset --job {params.job:q} mini_pose --out {params.root} > {log} 2>&1"


rule evaluate_ov6dpe:
    input:
        unpack(eval_inputs(lambda w: w.dataset)),
    output:
        f"{R}/eval/ov6dpe/{{dataset}}/{{mask}}/{{variant}}/metrics.json",
    params:
        job=job("evaluate_ov6dpe"),
        conf=conf("evaluate_ov6dpe"),
        ckpt=lambda w: variant_checkpoint(w.variant),
        root=lambda w: config["datasets"][w.dataset]["root"],
    log:
        logfile("evaluate/ov6dpe-{dataset}-{mask}-{variant}"),
    benchmark:
        "benchmarks/evaluate_ov6dpe-{dataset}-{mask}-{variant}.tsv"
    wildcard_constraints:
        mask="oracle|text",
    threads: job_threads("evaluate")
    resources:
        **job_resources("evaluate"),
    conda:
        ENV
    shell:
        "declip evaluate --job {params.job:q} ov6dpe --variant {wildcards.variant} --checkpoint {params.ckpt} "
        "--data {params.root} --dataset {wildcards.dataset} --mask {wildcards.mask} --out {output} "
        "--threads {threads} > {log} 2>&1"


rule table_ov6dpe:
    input:
        ov6dpe_metrics(EV["ov6dpe"]["variants"]),
    output:
        csv=report(f"{R}/tables/ov6dpe.csv", caption="../report/table.rst", category="Tables", labels={"table": "ov6dpe"}),
        md=f"{R}/tables/ov6dpe.md",
    params:
        job=job("table_ov6dpe"),
        conf=conf("table_ov6dpe"),
        metrics=lambda w: f"{R}/eval",
        out_dir=lambda w, output: os.path.dirname(output.md),
    log:
        logfile("table_ov6dpe"),
    threads: job_threads("tables")
    resources:
        **job_resources("tables"),
    conda:
        ENV
    shell:
        "declip tables --job {params.job:q} --metrics-root {params.metrics} --out-dir {params.out_dir} --table ov6dpe > {log} 2>&1"
