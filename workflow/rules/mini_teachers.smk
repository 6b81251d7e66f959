# Mini preset: label-free pretraining of the tiny teachers (one job per teacher, seed-independent, so
# every seed's distillation reuses them and their caches), and the quality figure next to the student
# CLIP's own (patch-affinity ROC AUC on held-out images against GT masks).

if MINI and config["teachers"].get("tiny_weights"):

    rule pretrain_teacher:
        input:
            train=dataset_marker("mini2d"),
            val=dataset_marker(config["mini"]["teachers"]["quality"]["dataset"]),
        output:
            weights=f"{config['teachers']['tiny_weights']}/{{teacher}}.pt",
            metrics=f"{config['teachers']['tiny_weights']}/{{teacher}}.json",
        params:
            job=job("pretrain_teacher"),
            conf=conf("pretrain_teacher"),
        log:
            logfile("pretrain_teacher/{teacher}"),
        benchmark:
            "benchmarks/pretrain_teacher/{teacher}.tsv"
        threads: job_threads("pretrain")
        resources:
            **job_resources("pretrain"),
        conda:
            ENV
        shell:
            "declip pretrain --job {params.job:q} --teacher {wildcards.teacher} --data {input.train} "
            "--out {output.weights} --threads {threads} > {log} 2>&1"

    # The teachers most variants wait for (SD and the default VFM) are trained first; the other VFMs serve
    # one vfm_* variant each.
    use rule pretrain_teacher as pretrain_teacher_first with:
        priority: 5
        wildcard_constraints:
            teacher="|".join(["sd", variant_method(config, "declip")["vfm"]]),

    ruleorder: pretrain_teacher_first > pretrain_teacher


if MINI:

    rule clip_affinity:
        input:
            val=dataset_marker(config["mini"]["teachers"]["quality"]["dataset"]),
            clip=clip_checkpoint_inputs(),
        output:
            f"{os.path.dirname(config['student']['checkpoint'])}/clip_affinity.json",
        params:
            job=job("clip_affinity"),
            conf=conf("clip_affinity"),
            sources=lambda w: f"--source clip:{config['method']['dense_mode']} --source clip:vanilla",
        log:
            logfile("clip_affinity"),
        threads: job_threads("evaluate")
        resources:
            **job_resources("evaluate"),
        conda:
            ENV
        shell:
            "declip affinity --job {params.job:q} {params.sources} --out {output} > {log} 2>&1"
