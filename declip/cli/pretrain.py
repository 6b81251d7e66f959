"""`declip pretrain`: contrastive pretraining of the mini preset's tiny CLIP (declip.models.pretrain)."""

from __future__ import annotations

from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("--data", default="data/mini2d/MANIFEST.json",
                        help="The mini2d dataset: its MANIFEST.json (the rule's input) or its root folder.")
    parser.add_argument("--out", default=None,
                        help="Checkpoint to write (open_clip layout); default: config key student.checkpoint. "
                             "pretrain_metrics.json is written next to it.")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (the rule passes Snakemake's {threads}; default: torch's choice).")


def run(args, cfg) -> dict:
    from declip.models.pretrain import pretrain

    out = args.out or cfg["student"]["checkpoint"]
    metrics = pretrain(cfg, args.data, out)
    # The numbers are in pretrain_metrics.json (a rule output), which the tracking layer reads.
    return {"artifacts": [str(Path(metrics["checkpoint"]).parent / "pretrain_metrics.json")]}
