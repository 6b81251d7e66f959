# Teacher cache: VFM tokens and SD affinities, extracted ONCE per dataset x teacher and shared by
# every variant that uses that teacher (the DAG shows one extraction job per teacher).


rule teachers:
    input:
        data=lambda w: dataset_marker(w.dataset),
        models=teacher_inputs,
    output:
        teacher_index("{dataset}", "{teacher}"),
    params:
        job=job("teachers"),
        conf=conf("teachers"),
        teacher=lambda w: "sd" if w.teacher == "sd" else f"vfm:{w.teacher}",
    log:
        logfile("teachers/{dataset}-{teacher}"),
    benchmark:
        "benchmarks/teachers/{dataset}-{teacher}.tsv"
    threads: job_threads("teachers")
    priority: 5  # seconds each, and distillations wait for them
    resources:
        **job_resources("teachers"),
    conda:
        ENV
    shell:
        "declip teachers --job {params.job:q} --dataset {wildcards.dataset} --teacher {params.teacher} "
        "--out {output} --threads {threads} > {log} 2>&1"
