"""Tracking that a cluster can rely on: bounded waits, no credentials in logs, nothing lost.

- A job checks the tracking server with one short connection attempt (PROBE_SECONDS) and caps MLflow's
  own HTTP timeout and retries, so an unreachable server costs a job seconds, not MLflow's minutes of
  retries. The invocation checks once at start; when the server is off it says so once and tells every
  job through OFF_ENV, so jobs skip the attempt altogether.
- A job that cannot record its run writes a pending record (its job spec, result, status, commit and
  invocation run) under PENDING_DIR; its outputs stay where they are. `declip track sync`, or the next
  invocation that reaches the server, uploads the pending records.
- Credentials of a tracking URI (`https://user:token@host`) are masked in every message; the URI itself
  travels to jobs through the environment (MLFLOW_TRACKING_URI), never on a command line.

Used by `declip.tracking` only (the CLI layer); imports nothing heavy.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

OFF_ENV = "DECLIP_TRACKING_OFF"
PROBE_SECONDS = 3.0
# MLflow's defaults are 7 retries with exponential backoff and a 120 s timeout per request.
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
PENDING_DIR = Path(".snakemake") / "declip" / "tracking-pending"

_CREDENTIALS = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.\-]*://)[^/@\s]*@")


def redact(text: object) -> str:
    """`text` with the user:password part of every URI in it replaced by ***."""
    return _CREDENTIALS.sub(r"\1***@", str(text))


def bound_http_waits() -> None:
    """Cap MLflow's HTTP timeout and retries in this process (a user's own setting wins)."""
    for key, value in HTTP_LIMITS.items():
        os.environ.setdefault(key, value)


def unreachable(uri: str) -> str | None:
    """Why the tracking store at `uri` cannot be used now, or None; bounded by PROBE_SECONDS."""
    if os.environ.get(OFF_ENV):
        return os.environ[OFF_ENV]
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https"):
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            with socket.create_connection((parts.hostname or "localhost", port), timeout=PROBE_SECONDS):
                return None
        except OSError as e:
            return f"the tracking server {redact(uri)} is unreachable ({type(e).__name__}: {redact(e)})"
    if parts.scheme == "sqlite":
        folder = Path(uri[len("sqlite:///"):]).parent
        if not folder.is_dir():
            return f"the folder of the tracking database {redact(uri)} does not exist"
    return None


def switch_off(reason: str) -> None:
    """Say once that tracking is off for this invocation, and tell its jobs (they inherit the environment)."""
    os.environ[OFF_ENV] = reason
    log.warning("MLflow tracking is off for this run: %s. Jobs keep their records in %s; upload them later "
                "with `declip track sync`.", reason, PENDING_DIR)


def _pending_name(job_key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=\-]+", "_", job_key)[:200] + ".json"


def save_pending(job: dict, result: dict, seconds: float, status: str, parent: str | None,
                 git_sha: str | None, root: Path | None = None) -> Path:
    """The record of a job that could not be tracked (a later one of the same job replaces it)."""
    folder = (root or Path.cwd()) / PENDING_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / _pending_name(job.get("job_key", "job"))
    record = {"job": job, "result": result, "seconds": seconds, "status": status, "parent": parent,
              "git_sha": git_sha, "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1, default=str))
    tmp.replace(path)
    return path


def pending(root: Path | None = None) -> list[Path]:
    return sorted(((root or Path.cwd()) / PENDING_DIR).glob("*.json"))


def load_pending(path: Path) -> dict:
    return json.loads(path.read_text())
