# Open-vocabulary video instance segmentation (protocols.md section 6): the mini video world, the CLIP-VIS
# feature protocol per benchmark x track source x variant, and its table (results/tables/ovvis.csv).


rule dataset_mini_video:
    output:
        f"{config['datasets']['mini_video']['root']}/MANIFEST.json",
    params:
        job=job("dataset_mini_video"),
        conf=conf("dataset_mini_video"),
        root=lambda w, output: os.path.dirname(output[0]),
    log:
        logfile("dataset_mini_video"),
    threads: job_threads("dataset")
    resources:
        **job_resources("dataset"),
    conda:
        ENV
    shell:
        "declip dataset --job {params.job:q} mini_video --out {params.root} > {log} 2>&1"


rule evaluate_ovvis:
    input:
        unpack(eval_inputs(lambda w: w.benchmark)),
    output:
        metrics=f"{R}/eval/ovvis/{{benchmark}}/{{tracks}}/{{variant}}/metrics.json",
        results=f"{R}/eval/ovvis/{{benchmark}}/{{tracks}}/{{variant}}/results.json",
    params:
        job=job("evaluate_ovvis"),
        conf=conf("evaluate_ovvis"),
        ckpt=lambda w: variant_checkpoint(w.variant),
        root=lambda w: config["datasets"][w.benchmark]["root"],
    log:
        logfile("evaluate/ovvis-{benchmark}-{tracks}-{variant}"),
    benchmark:
        "benchmarks/evaluate_ovvis-{benchmark}-{tracks}-{variant}.tsv"
    threads: job_threads("evaluate")
    resources:
        **job_resources("evaluate"),
    conda:
        ENV
    shell:
        "declip evaluate --job {params.job:q} ovvis --variant {wildcards.variant} --checkpoint {params.ckpt} "
        "--data {params.root} --benchmark {wildcards.benchmark} --tracks {wildcards.tracks} --out {output.metrics} "
        "--threads {threads} > {log} 2>&1"


rule table_ovvis:
    input:
        ovvis_metrics(config["tables"]["ovvis_variants"]),
    output:
        csv=report(f"{R}/tables/ovvis.csv", caption="../report/table.rst", category="Tables", labels={"table": "ovvis"}),
        md=f"{R}/tables/ovvis.md",
    params:
        job=job("table_ovvis"),
        conf=conf("table_ovvis"),
        metrics=lambda w: f"{R}/eval",
        out_dir=lambda w, output: os.path.dirname(output.md),
    log:
        logfile("table_ovvis"),
    threads: job_threads("tables")
    resources:
        **job_resources("tables"),
    conda:
        ENV
    shell:
        "declip tables --job {params.job:q} --metrics-root {params.metrics} --out-dir {params.out_dir} --table ovvis "
        "> {log} 2>&1"
