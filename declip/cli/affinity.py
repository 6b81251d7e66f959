"""`declip affinity`: patch-affinity ROC AUC of a teacher or of the original CLIP on held-out images
(declip.evaluate.affinity): the quality figure of the mini teachers, next to the student CLIP's own."""

from __future__ import annotations

import json
from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("--source", action="append", required=True,
                        help="vfm:<name>, sd, or clip:<dense mode> (the original CLIP's context tokens in that mode); repeatable.")
    parser.add_argument("--out", required=True, help="JSON file: one entry per source.")


def run(args, cfg) -> dict:
    from declip.evaluate.affinity import affinity_auc

    results = {s: affinity_auc(cfg, s) for s in args.source}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    return {"artifacts": [str(out)]}  # the AUCs are in the JSON (a rule output), which the tracking layer reads
