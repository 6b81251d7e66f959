"""`declip tables`: render the paper's tables (CSV + Markdown) from the metrics files that exist."""

from __future__ import annotations


def add_arguments(parser) -> None:
    from declip.tables.registry import TABLES

    parser.add_argument("--metrics-root", default="results/eval", help="Root of the evaluate steps' metrics files.")
    parser.add_argument("--out-dir", default="results/tables", help="Where <table>.csv and <table>.md go.")
    parser.add_argument("--table", action="append", default=None, choices=list(TABLES), metavar="ID",
                        help=f"Render only this table (repeatable; default all): {', '.join(TABLES)}.")
    parser.add_argument("--table2-out", default=None,
                        help="CSV path of journal Table 2 (default: <out-dir>/../table2.csv).")
    parser.add_argument("--preset", default=None, help="Preset name shown in the tables (default: the config's `preset`).")
    parser.add_argument("--regionclf-dataset", default=None,
                        help="Region-classification dataset (default: evaluate.regionclf.dataset, else the one on disk).")
    parser.add_argument("--benchmarks", nargs="+", default=None,
                        help="tfseg benchmarks = table columns (default: evaluate.tfseg.benchmarks, else those on disk).")


def run(args, cfg) -> dict:
    from declip.config import resolve_path
    from declip.tables.render import render_tables

    written = render_tables(resolve_path(args.metrics_root), resolve_path(args.out_dir), table_ids=args.table,
                            table2_out=resolve_path(args.table2_out) if args.table2_out else None, cfg=cfg,
                            preset=args.preset, regionclf_dataset=args.regionclf_dataset, benchmarks=args.benchmarks)
    return {"artifacts": [str(p) for p in written]}
