# declip-repro: dataset -> teacher cache -> distillation -> evaluation -> the paper's tables.
# Mini preset (default, offline, CPU):   snakemake --cores all results/table2.csv
# Full scale:                             snakemake --cores all --configfile workflow/presets/paper-b16.yaml
# Cluster:                                add --profile slurm
# All logic lives in the `declip` package; rules call `declip <verb>`.

import os

from snakemake.utils import min_version

min_version("9.0")


configfile: os.path.join(workflow.basedir, "config.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/tracking.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/mini_teachers.smk"
include: "workflow/rules/teachers.smk"
include: "workflow/rules/distill.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/ov6dpe.smk"
include: "workflow/rules/ovss.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/ovvis.smk"
include: "workflow/rules/ovd.smk"
include: "workflow/rules/claims.smk"


rule all:
    default_target: True
    input:
        rules.tables.output,
        rules.table2.output,
        rules.table_ov6dpe.output,
        rules.table_ovvis.output,
        rules.table_ovd.output,
        rules.table_ovss.output,
        figure_outputs(config["tables"]["figure_variants"]),


rule ablations:
    input:
        rules.tables.output,
        rules.claims.output,
        figure_outputs(config["tables"]["figure_variants"]),
