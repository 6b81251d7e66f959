"""Fresh clones of this checkout for end-to-end tests (the working tree as it is, uncommitted edits too)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def _git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def fresh_clone(dest: Path) -> Path:
    """`git clone` of this checkout, then its uncommitted edits and new (not ignored) files copied over,
    so a test of a clone tests the code at hand. Nothing of the source checkout is modified."""
    _git("clone", "-q", "--no-hardlinks", str(ROOT), str(dest))
    changed = _git("ls-files", "-m", "--others", "--exclude-standard", "-z").split("\0")
    for rel in filter(None, changed):
        src, dst = ROOT / rel, dest / rel
        if not src.exists() and not src.is_symlink():
            (dst.unlink() if dst.exists() else None)
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.exists() or dst.is_symlink():
            dst.unlink()
        if src.is_symlink():
            os.symlink(os.readlink(src), dst)
        else:
            shutil.copy2(src, dst)
    return dest


def run_snakemake(workdir: Path, *args: str, env: dict | None = None, timeout: int = 900):
    """`snakemake ARGS` in `workdir`, as a user types it there; fails the test with its output's tail."""
    r = subprocess.run([*SNAKEMAKE, *args], cwd=workdir, capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, **(env or {})})
    assert r.returncode == 0, f"snakemake {' '.join(args)} failed in {workdir}:\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
    return r


def digests(root: Path, folders: list[str]) -> dict[str, str]:
    """sha256 of every file under the given folders of `root` (relative path -> digest)."""
    out = {}
    for folder in folders:
        for p in sorted((root / folder).rglob("*")):
            if p.is_file():
                out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# Wall-clock fields of JSON outputs (durations, throughput, timestamps, the commit): not part of a result.
VOLATILE = {"seconds", "cpu_seconds", "job_seconds", "seconds_per_step", "cpu_seconds_per_step", "time_split_s", "images_per_s",
            "finished", "created", "git_sha"}


def _stable(value):
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def comparable_outputs(root: Path, folders: list[str], skip: tuple[str, ...] = ("results/report.html",)) -> dict:
    """Every output file under `folders`, for comparing two runs: JSON and JSON-lines files without their
    wall-clock fields and with the run folder's path replaced, every other file by its sha256 (bit for bit).
    `skip`: files that embed run times."""
    out = {}
    for rel, digest in digests(root, folders).items():
        path = root / rel
        if rel in skip:
            continue
        text = path.read_text().replace(str(root.resolve()), "<run folder>") if path.suffix in (".json", ".jsonl") else ""
        if path.suffix == ".json":  # absolute paths name the run's folder: two runs differ only there
            out[rel] = json.dumps(_stable(json.loads(text)), sort_keys=True)
        elif path.suffix == ".jsonl":
            out[rel] = [json.dumps(_stable(json.loads(line)), sort_keys=True) for line in text.splitlines()]
        else:
            out[rel] = digest
    return out
