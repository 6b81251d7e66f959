"""`declip claims`: results/tables/claims.csv/.md (declip.tables.claims) and, on the mini preset, the
teacher-quality table teachers.csv/.md (the pretrained teachers' affinity AUC next to the CLIP's)."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--metrics-root", default="results/eval", help="Folder of the evaluation metrics files.")
    parser.add_argument("--out-dir", default="results/tables", help="Where claims.csv/.md (and teachers.csv/.md) go.")
    parser.add_argument("--teachers-dir", default=None, help="Folder of the pretrained mini teachers' <name>.json (mini preset).")
    parser.add_argument("--clip-affinity", default=None, help="The CLIP's affinity figure (declip affinity's JSON), mini preset.")


def run(args, cfg) -> dict:
    from declip.tables.claims import render_claims

    written = render_claims(cfg, args.metrics_root, args.out_dir, args.teachers_dir, args.clip_affinity)
    return {"artifacts": [str(p) for p in written]}
