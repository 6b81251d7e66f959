# Distillation, one job per variant. With resources gpu > 1 the job runs under torchrun (DDP); the
# trainer keeps the total batch with gradient accumulation whatever the number of GPUs.


rule distill:
    input:
        data=dataset_marker(config["distill"]["dataset"]),
        clip=clip_checkpoint_inputs(),
        teachers=lambda w: [teacher_index(config["distill"]["dataset"], t) for t in variant_teachers(w.variant)],
    output:
        model=f"{R}/distill/{{variant}}/model.pt",
        provenance=f"{R}/distill/{{variant}}/provenance.json",
        losses=f"{R}/distill/{{variant}}/losses.jsonl",
    params:
        job=job("distill"),
        conf=conf("distill"),
        launcher=distill_launcher,
        teachers=lambda w, input: ("--teachers " + " ".join(input.teachers)) if input.teachers else "",
    log:
        logfile("distill/{variant}"),
    benchmark:
        "benchmarks/distill/{variant}.tsv"
    threads: job_threads("distill")
    resources:
        **job_resources("distill"),
    conda:
        ENV
    shell:
        "{params.launcher} distill --job {params.job:q} --variant {wildcards.variant} --data {input.data} "
        "{params.teachers} --out {output.model} --threads {threads} > {log} 2>&1"
