# The claims table: the papers' qualitative claims over seeds (results/tables/claims.csv/.md), plus on the
# mini preset the teacher-quality table (results/tables/teachers.csv/.md).


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


rule claims:
    input:
        regionclf_metrics(claim_variants()),
        tfseg_metrics(claim_variants()),
        mini_teacher_figures(),
    output:
        csv=report(f"{R}/tables/claims.csv", caption="../report/table.rst", category="Tables", labels={"table": "claims"}),
        md=f"{R}/tables/claims.md",
    params:
        job=job("claims"),
        conf=conf("claims"),
        metrics=lambda w: f"{R}/eval",
        out_dir=lambda w, output: os.path.dirname(output.md),
        teachers=lambda w: (f"--teachers-dir {config['teachers']['tiny_weights']} --clip-affinity {rules.clip_affinity.output[0]}"
                            if mini_teacher_figures() else ""),
    log:
        logfile("claims"),
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        ENV
    shell:
        "declip claims --job {params.job:q} --metrics-root {params.metrics} --out-dir {params.out_dir} {params.teachers} > {log} 2>&1"
