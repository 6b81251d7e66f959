"""MLflow mirror of the workflow: one run per `snakemake` invocation, one run per job.

The job runs are not nested under the invocation's run (MLflow's runs table shows nested runs collapsed
under their parent); each carries the invocation's run id as the tag `declip.invocation_run` instead.

Files are the source of truth; tracking is best effort: every public function here logs and swallows
its own failures, so a tracking problem never fails a job. Used by the CLI layer and the Snakefile's
onstart/onsuccess/onerror hooks only (mlflow is imported inside the functions).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

from declip import tracking_guard as guard
from declip.config import git_sha
from declip.tracking_ui import (NOTE_TAG, TABLE_RULES, headline_metrics, method_params, prepare_experiment, run_name,
                                table_description, table_figures, table_files, view_url)

log = logging.getLogger(__name__)

PARENT_ENV = "DECLIP_MLFLOW_PARENT_RUN_ID"
INVOCATION_TAG = "declip.invocation_run"  # filter: tags.`declip.invocation_run` = '<id>'
# Set by the invocation when `tracking.record: invocation`: its jobs queue their records, it uploads them at its end.
DEFER_ENV = "DECLIP_TRACKING_DEFER"
TAG_KEYS = ("rule", "variant", "dataset", "job_key")
_METRIC_SUFFIXES = (".json",)
_ARTIFACT_SUFFIXES = (".json", ".csv", ".md", ".png", ".tsv", ".txt", ".html")
_MAX_ARTIFACT_BYTES = 5_000_000


def tracking_uri(tracking_cfg: dict | None = None) -> str:
    """MLFLOW_TRACKING_URI, else config `tracking.uri`, else sqlite `mlflow.db` in the working directory
    (the run's folder: Snakemake's --directory, the checkout by default; never the package's location)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    if tracking_cfg and tracking_cfg.get("uri"):
        return tracking_cfg["uri"]
    return f"sqlite:///{(Path.cwd() / 'mlflow.db').resolve()}"


def _client(tracking_cfg: dict):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri(tracking_cfg))


def _experiment_id(client, tracking_cfg: dict) -> str:
    name = tracking_cfg.get("experiment", "declip-repro")
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    # Artifacts beside the database, never in the CWD's ./mlruns.
    location = (Path.cwd() / "mlartifacts").resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # created concurrently by another process
        return client.get_experiment_by_name(name).experiment_id


def start_invocation(config: dict, targets: list[str] | None = None) -> str | None:
    """Create the database and the invocation's run; export its id to the jobs' environment."""
    cfg = config.get("tracking", {})
    if not cfg.get("enabled", True):
        return None
    guard.bound_http_waits()
    reason = guard.unreachable(tracking_uri(cfg))
    if reason:
        guard.switch_off(reason)
        return None
    try:
        client = _client(cfg)
        exp_id = _experiment_id(client, cfg)
        _prepare_ui(client, exp_id, config)
        run = client.create_run(
            exp_id,
            run_name=f"snakemake {time.strftime('%Y-%m-%d %H:%M:%S')}",
            tags={"declip.invocation": "snakemake", "declip.preset": config.get("preset", ""),
                  "declip.targets": " ".join(targets or []), "declip.git_sha": git_sha() or "unknown"},
        )
        os.environ[PARENT_ENV] = run.info.run_id
        if cfg.get("record", "job") == "invocation":
            os.environ[DEFER_ENV] = "1"
        log.info("MLflow: invocation run %s at %s", run.info.run_id, guard.redact(tracking_uri(cfg)))
    except Exception as e:  # noqa: BLE001 - tracking must never stop the workflow
        guard.switch_off(guard.redact(e))
        return None
    sync_pending(cfg)  # what earlier jobs could not record
    return run.info.run_id


def _prepare_ui(client, exp_id: str, config: dict) -> None:
    try:
        prepare_experiment(client, exp_id, config)
    except Exception as e:  # noqa: BLE001 - the runs are recorded without the UI hints
        log.warning("MLflow: could not write the experiment's saved views (%s)", e)


def comparison_hint(config: dict) -> str | None:
    """Where `mlflow ui` shows the ablation comparison (a saved view of this experiment), or None."""
    cfg = config.get("tracking", {})
    if not cfg.get("enabled", True):
        return None
    try:
        exp = _client(cfg).get_experiment_by_name(cfg.get("experiment", "declip-repro"))
    except Exception:  # noqa: BLE001
        return None
    if exp is None:
        return None
    return (f"Compare the variants: run `mlflow ui` here, then open {view_url(exp.experiment_id)} "
            "(the other views: the links above the experiment's runs table).")


def end_invocation(config: dict, status: str) -> None:
    """Upload the records the jobs queued (`tracking.record: invocation`, or a store they could not reach),
    then close the invocation's run."""
    run_id = os.environ.get(PARENT_ENV)
    cfg = config.get("tracking", {})
    if not run_id or not cfg.get("enabled", True):
        return
    sync_pending(cfg)
    try:
        _client(cfg).set_terminated(run_id, status=status)
    except Exception as e:  # noqa: BLE001
        log.warning("MLflow: could not close invocation run %s (%s)", run_id, guard.redact(e))


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _numeric(d: dict) -> dict[str, float]:
    return {k: float(v) for k, v in flatten(d).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}


def _metrics_from_outputs(outputs: list[str]) -> dict[str, float]:
    metrics = {}
    for path in outputs:
        p = Path(path)
        if p.suffix in _METRIC_SUFFIXES and p.is_file() and p.stat().st_size < _MAX_ARTIFACT_BYTES:
            try:
                data = json.loads(p.read_text())
            except (ValueError, OSError):
                continue
            if isinstance(data, dict):
                metrics.update(_numeric(data))
    return metrics


def _mlflow_key(key: str) -> str:
    # MLflow keys allow alphanumerics, _ - . space / ; replace anything else.
    return "".join(c if c.isalnum() or c in "_-. /" else "_" for c in key)[:250]


def record_job(job: dict, result: dict, seconds: float, status: str = "FINISHED") -> str | None:
    """One run for a finished (or failed) job; supersedes older runs of the same job key."""
    cfg = job.get("tracking", {})
    if not cfg.get("enabled", True):
        return None
    if os.environ.get(DEFER_ENV):  # no mlflow import in the job: the invocation uploads the record when it ends
        _queue(job, result, seconds, status)
        return None
    guard.bound_http_waits()
    reason = guard.unreachable(tracking_uri(cfg))  # bounded: seconds, not MLflow's retries
    if reason is None:
        try:
            return _record_any(job, result, seconds, status, cfg)
        except Exception as e:  # noqa: BLE001 - tracking never fails a job
            reason = guard.redact(e)
    path = _queue(job, result, seconds, status)
    if not os.environ.get(guard.OFF_ENV):  # else the invocation has said it once already
        log.warning("MLflow: job %s not recorded (%s); its files are unaffected and its record waits in %s "
                    "for `declip track sync`", job.get("job_key"), reason, path)
    return None


def _queue(job: dict, result: dict, seconds: float, status: str) -> Path:
    """Keep the job's record for `sync_pending` (with its invocation run and commit)."""
    return guard.save_pending(job, result, seconds, status, os.environ.get(PARENT_ENV), git_sha())


def _record_any(job: dict, result: dict, seconds: float, status: str, cfg: dict) -> str | None:
    """A job's run, or one run per table for a finished tables job."""
    if job.get("rule") in TABLE_RULES and status == "FINISHED":
        return _record_tables(job, result, seconds, cfg)
    return _record(job, result, seconds, status, cfg)


def _record(job: dict, result: dict, seconds: float, status: str, cfg: dict) -> str:
    from mlflow.entities import Metric, Param, RunTag

    client = _client(cfg)
    exp_id = _experiment_id(client, cfg)
    run_id = _new_run(client, exp_id, job)

    now = int(time.time() * 1000)
    params = [Param(_mlflow_key(k), json.dumps(v) if not isinstance(v, str) else v)
              for k, v in _params(job).items()]
    metrics = _metrics_from_outputs(job.get("outputs", []))
    metrics.update(_numeric(result.get("metrics", {})))
    metrics.update(headline_metrics(job.get("rule", ""), metrics))
    metrics["job_seconds"] = seconds
    batch = [Metric(_mlflow_key(k), v, now, 0) for k, v in metrics.items()]
    batch += _step_metrics(result.get("step_metrics"))
    for i in range(0, max(len(params), 1), 100):
        client.log_batch(run_id, params=[Param(p.key, p.value[:6000]) for p in params[i:i + 100]])
    for i in range(0, len(batch), 900):
        client.log_batch(run_id, metrics=batch[i:i + 900])
    client.log_batch(run_id, tags=[RunTag("declip.seconds", f"{seconds:.1f}")])
    for path in _artifacts(job.get("outputs", []) + list(result.get("artifacts", []))):
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, status=status)
    return run_id


def _new_run(client, exp_id: str, job: dict, key: str | None = None, name: str | None = None) -> str:
    """A run for `key` (default the job's key) named for the UI; supersedes older runs of that key."""
    from mlflow.entities import ViewType

    key = key or job["job_key"]
    for old in client.search_runs([exp_id], filter_string=f"tags.`declip.job_key` = '{key}'", run_view_type=ViewType.ACTIVE_ONLY):
        client.delete_run(old.info.run_id)  # soft delete: the newer run supersedes it

    tags = {f"declip.{k}": str(job.get(k, "")) for k in TAG_KEYS}
    name = name or run_name(job)
    tags.update({"declip.git_sha": job.get("git_sha") or git_sha() or "unknown", "declip.preset": job.get("preset", ""),
                 "declip.job_key": key, "mlflow.runName": name})
    parent = os.environ.get(PARENT_ENV)
    if parent:
        tags[INVOCATION_TAG] = parent
    return client.create_run(exp_id, run_name=name, tags=tags).info.run_id


def _params(job: dict) -> dict:
    """The job's config slice, dotted; a variant's method settings flat under their own names instead."""
    method = method_params(job)
    cfg = {k: v for k, v in job.get("config", {}).items() if not (method and k == "method")}
    return {**flatten(cfg), **method}


def _record_tables(job: dict, result: dict, seconds: float, cfg: dict) -> str | None:
    """A tables job: one run per table, named by its id, with its CSV, Markdown and figures as artifacts."""
    client = _client(cfg)
    exp_id = _experiment_id(client, cfg)
    files = table_files(job.get("outputs", []) + list(result.get("artifacts", [])))
    last = None
    for table_id, paths in files.items():
        last = _new_run(client, exp_id, job, key=f"table:{table_id}", name=table_id)
        client.set_tag(last, "declip.table", table_id)
        client.set_tag(last, NOTE_TAG, table_description(table_id))
        client.set_tag(last, "declip.seconds", f"{seconds:.1f}")  # of the job that rendered every table
        for path in _artifacts([str(p) for p in paths]):
            client.log_artifact(last, str(path))
        for png in table_figures(table_id, job.get("config", {})):
            client.log_artifact(last, str(png), artifact_path=f"figures/{png.parent.name}")
        client.set_terminated(last, status="FINISHED")
    return last


def _step_metrics(path: str | None) -> list:
    """Per-step training curves from a JSON-lines file (one {"step": n, name: value, ...} per line)."""
    from mlflow.entities import Metric

    if not path or not Path(path).is_file():
        return []
    out = []
    now = int(time.time() * 1000)
    for line in Path(path).read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        step = int(row.get("step", 0))
        for k, v in _numeric({k: v for k, v in row.items() if k != "step"}).items():
            out.append(Metric(_mlflow_key(f"train/{k}"), v, now, step))
    return out


def _artifacts(paths: list[str]) -> list[Path]:
    seen, out = set(), []
    for path in paths:
        p = Path(path)
        if p.is_dir():
            candidates = sorted(q for q in p.rglob("*") if q.is_file())
        else:
            candidates = [p]
        for q in candidates:
            if q.suffix in _ARTIFACT_SUFFIXES and q.is_file() and q.stat().st_size < _MAX_ARTIFACT_BYTES and q not in seen:
                seen.add(q)
                out.append(q)
    return out


def sync_pending(tracking_cfg: dict | None = None) -> tuple[int, int]:
    """Upload the records of jobs that could not reach the tracking store (tracking_guard.PENDING_DIR in
    the working directory), each with its original invocation run and commit; returns (uploaded, left)."""
    cfg = dict(tracking_cfg or {})
    paths = guard.pending()
    if not paths or not cfg.get("enabled", True):
        return 0, len(paths)
    guard.bound_http_waits()
    reason = guard.unreachable(tracking_uri(cfg))
    if reason:
        log.warning("MLflow: %d pending record(s) not uploaded: %s", len(paths), reason)
        return 0, len(paths)
    uploaded, parent_before = 0, os.environ.get(PARENT_ENV)
    try:
        for path in paths:
            rec = guard.load_pending(path)
            job = dict(rec["job"], git_sha=rec.get("git_sha"))
            os.environ.pop(PARENT_ENV, None)
            if rec.get("parent"):
                os.environ[PARENT_ENV] = rec["parent"]
            try:
                _record_any(job, rec["result"], rec["seconds"], rec["status"], {**job.get("tracking", {}), **cfg})
            except Exception as e:  # noqa: BLE001
                log.warning("MLflow: could not upload %s (%s); it stays pending", path, guard.redact(e))
                continue
            path.unlink()
            uploaded += 1
    finally:
        os.environ.pop(PARENT_ENV, None)
        if parent_before:
            os.environ[PARENT_ENV] = parent_before
    if uploaded:
        log.info("MLflow: recorded %d queued job run(s)", uploaded)
    return uploaded, len(paths) - uploaded
