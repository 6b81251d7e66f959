# Tables (declared once in declip.tables.registry) and figures; the report gathers both.

rule tables:
    input:
        regionclf_metrics(config["variants"]),
        tfseg_metrics(config["variants"]),
        # Each table's MLflow run carries the figures of its variants (declip.tracking_ui.table_figures).
        figure_outputs(config["tables"]["figure_variants"]),
    output:
        csv=[
            report(f"{R}/tables/{t}.csv", caption="../report/table.rst", category="Tables", labels={"table": t})
            for t in TABLE_IDS
        ],
        md=[f"{R}/tables/{t}.md" for t in TABLE_IDS],
    params:
        job=job("tables"),
        conf=conf("tables"),
        metrics=lambda w: f"{R}/eval",
        out_dir=lambda w, output: os.path.dirname(output.md[0] if isinstance(output.md, list) else output.md),
    log:
        logfile("tables"),
    threads: job_threads("tables")
    resources:
        **job_resources("tables"),
    conda:
        ENV
    shell:
        "declip tables --job {params.job:q} --metrics-root {params.metrics} --out-dir {params.out_dir} "
        + " ".join(f"--table {t}" for t in TABLE_IDS)
        + " > {log} 2>&1"


rule table2:
    input:
        ov3d_metrics(config["tables"]["table2_variants"]),
    output:
        csv=report(f"{R}/table2.csv", caption="../report/table2.rst", category="Tables", labels={"table": "table2"}),
        md=f"{R}/tables/table2.md",
    params:
        job=job("table2"),
        conf=conf("table2"),
        metrics=lambda w: f"{R}/eval",
        out_dir=lambda w, output: os.path.dirname(output.md[0] if isinstance(output.md, list) else output.md),
    log:
        logfile("table2"),
    threads: job_threads("tables")
    resources:
        **job_resources("tables"),
    conda:
        ENV
    shell:
        "declip tables --job {params.job:q} --metrics-root {params.metrics} --out-dir {params.out_dir} --table table2 "
        "--table2-out {output.csv} > {log} 2>&1"


rule figures:
    input:
        data=dataset_marker(EV["regionclf"]["dataset"]),
        ckpt=variant_checkpoint_inputs,
        clip=clip_checkpoint_inputs(),
        vfm=lambda w: teacher_index(EV["regionclf"]["dataset"], variant_method(config, "declip")["vfm"]),
    output:
        report(
            directory(f"{R}/figures/{{variant}}"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
            labels=lambda w: {"variant": w.variant, "figure": "{name}"},
        ),
    params:
        job=job("figures"),
        conf=conf("figures"),
        ckpt=lambda w: variant_checkpoint(w.variant),
        root=lambda w: config["datasets"][EV["regionclf"]["dataset"]]["root"],
        dataset=EV["regionclf"]["dataset"],
    log:
        logfile("figures/{variant}"),
    threads: job_threads("figures")
    resources:
        **job_resources("figures"),
    conda:
        ENV
    shell:
        "declip figures --job {params.job:q} --variant {wildcards.variant} --checkpoint {params.ckpt} "
        "--data {params.root} --dataset {params.dataset} --teachers {input.vfm} --out-dir {output} > {log} 2>&1"
