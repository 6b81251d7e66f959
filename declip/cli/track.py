"""`declip track sync`: upload the job records that could not reach the tracking server.

Jobs that ran while the server was unreachable kept their record in
`.snakemake/declip/tracking-pending/` (in the folder Snakemake ran in); run this there once the server
answers (MLFLOW_TRACKING_URI, else `tracking.uri`, else ./mlflow.db). The next `snakemake` run that
reaches the server does the same.
"""

from __future__ import annotations


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    sub.add_parser("sync", help="Upload pending job records, then delete them.")


def run(args, cfg) -> dict | None:
    from declip import tracking
    from declip.errors import UserFacingError

    uploaded, left = tracking.sync_pending(cfg.get("tracking", {}))
    print(f"uploaded {uploaded} pending job record(s); {left} left")
    if left:
        raise UserFacingError(f"{left} record(s) could not be uploaded (see the warnings above); they stay pending")
    return None
