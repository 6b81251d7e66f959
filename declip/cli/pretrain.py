"""`declip pretrain`: contrastive pretraining of the mini preset's tiny CLIP (declip.models.pretrain), or with
`--teacher NAME` the label-free pretraining of one tiny teacher (declip.models.mini_teachers) followed by its
patch-affinity figure (declip.evaluate.affinity), written to NAME.json next to the weights."""

from __future__ import annotations

from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("--data", default="data/mini2d/MANIFEST.json",
                        help="The mini2d dataset: its MANIFEST.json (the rule's input) or its root folder.")
    parser.add_argument("--out", default=None,
                        help="Checkpoint to write (open_clip layout); default: config key student.checkpoint. "
                             "pretrain_metrics.json is written next to it.")
    parser.add_argument("--teacher", default=None,
                        help="Pretrain this tiny teacher instead of the CLIP: a key of teachers.vfms, or sd. --out is then "
                             "its weights file, which must be <teachers.tiny_weights>/<NAME>.pt.")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (the rule passes Snakemake's {threads}; default: torch's choice).")


def run(args, cfg) -> dict:
    if args.teacher:
        return _teacher(args, cfg)
    from declip.models.pretrain import pretrain

    out = args.out or cfg["student"]["checkpoint"]
    metrics = pretrain(cfg, args.data, out)
    # The numbers are in pretrain_metrics.json (a rule output), which the tracking layer reads.
    return {"artifacts": [str(Path(metrics["checkpoint"]).parent / "pretrain_metrics.json")]}


def _teacher(args, cfg) -> dict:
    import json

    from declip.errors import UserFacingError
    from declip.evaluate.affinity import affinity_auc
    from declip.models.mini_teachers import SD, pretrain_teacher, weights_path
    from declip.models.pretrain import dataset_root

    expected = weights_path(cfg, args.teacher)
    if expected is None or (args.out and Path(args.out).absolute() != expected):
        raise UserFacingError(f"--out must be the teacher's weights file {expected} (teachers.tiny_weights/<name>.pt; "
                              "a null teachers.tiny_weights means random teachers, nothing to pretrain)")
    summary = pretrain_teacher(cfg, args.teacher, dataset_root(args.data), expected)
    source = SD if args.teacher == SD else f"vfm:{args.teacher}"
    summary["affinity"] = affinity_auc(cfg, source)
    metrics_path = expected.with_suffix(".json")
    metrics_path.write_text(json.dumps(summary, indent=2))
    # Its numbers are in NAME.json (a rule output), which the tracking layer reads.
    return {"artifacts": [str(metrics_path)]}
