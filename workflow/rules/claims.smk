# The claims table: the papers' qualitative claims over seeds (results/tables/claims.csv/.md), plus on the
# mini preset the teacher-quality table (results/tables/teachers.csv/.md).


rule claims:
    input:
        regionclf_metrics(claim_variants()),
        tfseg_metrics(claim_variants()),
        mini_teacher_figures(),
    output:
        csv=report(f"{R}/tables/claims.csv", caption="../report/table.rst", category="Tables", labels={"table": "claims"}),
        md=f"{R}/tables/claims.md",
        **({"teachers_csv": report(f"{R}/tables/teachers.csv", caption="../report/table.rst", category="Tables",
                                   labels={"table": "teachers"}),
            "teachers_md": f"{R}/tables/teachers.md"} if mini_teacher_figures() else {}),
    params:
        job=job("claims"),
        conf=conf("claims"),
        metrics=lambda w: f"{R}/eval",
        out_dir=lambda w, output: os.path.dirname(output.md),
        teachers=lambda w: (f"--teachers-dir {config['teachers']['tiny_weights']} --clip-affinity {rules.clip_affinity.output[0]}"
                            if mini_teacher_figures() else ""),
    log:
        logfile("claims"),
    threads: job_threads("tables")
    resources:
        **job_resources("tables"),
    conda:
        ENV
    shell:
        "declip claims --job {params.job:q} --metrics-root {params.metrics} --out-dir {params.out_dir} {params.teachers} > {log} 2>&1"
