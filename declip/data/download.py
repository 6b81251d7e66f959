"""Resumable, verified downloads of full-scale datasets and weights, driven by manifests.

A manifest (`workflow/manifests/<name>.yaml`) lists every file: its path under the dataset root, its
URL, its sha256 where an authoritative one is published (else null: the sha256 computed on the first
download is recorded in a lock file next to the data and later downloads must match it), an optional
published md5, and whether to unpack it. Datasets behind registration or terms have `manual: true`
and instructions instead of URLs: the suite prints them and never scrapes.

Only the workflow's download rules call this module; compute steps never touch the network.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path


from declip.config import read_yaml, resolve_path, workflow_dir
from declip.errors import UserFacingError

log = logging.getLogger(__name__)

LOCK_NAME = "checksums.lock.json"
CHUNK = 1 << 20
RETRYABLE_HTTP = {408, 429, 500, 502, 503, 504}


def manifest_dir() -> Path:
    """The run's own manifests (its checkout's workflow/manifests), not the installed package's."""
    return workflow_dir() / "workflow" / "manifests"


def manifest_path(name: str) -> Path:
    p = Path(name)
    return p if p.suffix in (".yaml", ".yml") else manifest_dir() / f"{name}.yaml"


def available() -> list[str]:
    return sorted(p.stem for p in manifest_dir().glob("*.yaml"))


def load_manifest(name: str) -> dict:
    """Read and check a manifest; a missing or malformed one is a user error naming the fix."""
    path = manifest_path(name)
    if not path.exists():
        raise UserFacingError(f"no download manifest {path}; known datasets: {', '.join(available())}")
    m = read_yaml(path.read_text()) or {}
    for key in ("name", "root"):
        if key not in m:
            raise UserFacingError(f"manifest {path} lacks `{key}`")
    if m.get("manual"):
        if not m.get("instructions") or not m.get("expect"):
            raise UserFacingError(f"manual manifest {path} needs `instructions` and `expect` (paths that prove the data is in place)")
        bad = [p for p in m["expect"] if not _inside(p)]
        if bad:
            raise UserFacingError(f"manual manifest {path}: `expect` {bad} must be relative paths inside the dataset folder")
        return m
    for i, f in enumerate(m.get("files") or []):
        missing = [k for k in ("path", "url") if not f.get(k)]
        if missing or "sha256" not in f:
            raise UserFacingError(f"manifest {path}: file #{i} needs path, url and sha256 (null when none is published)")
        if f.get("unpack") not in (None, "zip", "tar"):
            raise UserFacingError(f"manifest {path}: file {f['path']}: unpack must be zip, tar or null")
    if not m.get("files"):
        raise UserFacingError(f"manifest {path} lists no files")
    _check_confined(m, path)
    return m


def _inside(rel: str) -> bool:
    """A relative path that stays inside its base folder (no absolute path, no `..` escaping it)."""
    parts = Path(str(rel)).parts
    if not parts or Path(str(rel)).is_absolute() or str(rel).startswith("~"):
        return False
    depth = 0
    for part in parts:
        depth += -1 if part == ".." else (0 if part == "." else 1)
        if depth < 0:
            return False
    return True


def _check_confined(m: dict, path: Path) -> None:
    """Every path of a manifest's files stays inside the dataset's folder (its root, wherever that is)."""
    for f in m["files"]:
        for key in ("path", "unpack_to"):
            if key in f and not _inside(f[key]):
                raise UserFacingError(f"manifest {path}: file {f['path']!r}: `{key}` {f[key]!r} points outside the "
                                      "dataset folder; use a relative path without `..`")
        for inner in f.get("unpack_inner", []):
            if not _inside(inner):
                raise UserFacingError(f"manifest {path}: file {f['path']!r}: `unpack_inner` {inner!r} points outside "
                                      "the dataset folder")
        if f.get("size") is not None and (not isinstance(f["size"], int) or f["size"] <= 0):
            raise UserFacingError(f"manifest {path}: file {f['path']!r}: `size` must be a positive number of bytes")


def file_digest(path: Path, algo: str = "sha256") -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _open(url: str, offset: int, timeout: float):
    req = urllib.request.Request(url, headers={"User-Agent": "declip-repro-downloader"})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    return urllib.request.urlopen(req, timeout=timeout)


def _fetch_once(url: str, part: Path, timeout: float, desc: str) -> int | None:
    """Append the rest of `url` to `part` (HTTP Range), or restart it when the server ignores ranges."""
    from tqdm import tqdm

    offset = part.stat().st_size if part.exists() else 0
    try:
        resp = _open(url, offset, timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # nothing left to fetch: the .part is already whole
            return offset
        raise
    with resp:
        if offset and resp.status != 206:
            log.info("%s: server ignored the range request; restarting from byte 0", url)
            offset = 0
        length = resp.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        mode = "ab" if offset else "wb"
        with open(part, mode) as f, tqdm(total=total, initial=offset, unit="B", unit_scale=True, desc=desc) as bar:
            for block in iter(lambda: resp.read(CHUNK), b""):
                f.write(block)
                bar.update(len(block))
    if total is not None and part.stat().st_size != total:
        raise ConnectionError(f"connection closed at byte {part.stat().st_size} of {total}")
    return total


def download_file(url: str, dest: str | Path, sha256: str | None = None, md5: str | None = None,
                  retries: int = 5, backoff: float = 2.0, timeout: float = 60.0, size: int | None = None) -> str:
    """Download `url` to `dest` through `dest.part` (resumed if present), verify, rename atomically.

    Returns the file's sha256. Transient failures are retried with exponential backoff; a checksum
    mismatch deletes the .part and raises UserFacingError naming the file and the URL.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            total = _fetch_once(url, part, timeout, dest.name)
            break
        except urllib.error.HTTPError as e:
            if e.code not in RETRYABLE_HTTP or attempt == retries:
                raise UserFacingError(f"downloading {dest} from {url} failed: HTTP {e.code} {e.reason}") from e
            err = e
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, OSError) as e:
            if attempt == retries:
                raise UserFacingError(
                    f"downloading {dest} from {url} failed after {retries + 1} attempts: {e}; "
                    f"rerun to resume from {part}") from e
            err = e
        wait = backoff * 2 ** attempt
        log.warning("%s: %s; retrying in %.0f s (attempt %d/%d)", url, err, wait, attempt + 2, retries + 1)
        time.sleep(wait)
    got_size = part.stat().st_size
    if size is not None and got_size != size:
        part.unlink()
        raise UserFacingError(f"{dest} from {url} has {got_size} bytes, the manifest says {size}; the partial file "
                              "was deleted, rerun the download (or correct `size` in the manifest)")
    if not sha256 and size is None and total is None:
        # Nothing says how long the file is: a connection that closed early would pass unnoticed.
        part.unlink()
        raise UserFacingError(f"{dest} from {url} cannot be checked for completeness: no sha256 or `size` in the "
                              "manifest and the server sent no Content-Length. Add the file's `size` (bytes) or "
                              "`sha256` to the manifest entry, then rerun")
    got = file_digest(part)
    if sha256 and got != sha256.lower():
        part.unlink()
        raise UserFacingError(f"checksum mismatch for {dest} from {url}: sha256 {got}, expected {sha256}; "
                              "the partial file was deleted, rerun the download (or check the manifest)")
    if md5 and file_digest(part, "md5") != md5.lower():
        part.unlink()
        raise UserFacingError(f"checksum mismatch for {dest} from {url}: md5 differs from the published {md5}; "
                              "the partial file was deleted, rerun the download")
    os.replace(part, dest)
    return got


def unpack(archive: Path, kind: str, into: Path) -> None:
    """Extract a zip or tar archive into `into`, refusing members that would land outside it."""
    into.mkdir(parents=True, exist_ok=True)
    base = into.resolve()
    damaged = (f"archive {archive} is damaged or truncated; delete it (and its .part) and rerun the download, "
               "which fetches and verifies it again")
    try:
        if kind == "zip":
            with zipfile.ZipFile(archive) as z:
                for name in z.namelist():
                    if not (base / name).resolve().is_relative_to(base):
                        raise UserFacingError(f"archive {archive} has an unsafe member {name!r} (it would land outside "
                                              f"{base}); nothing was unpacked. Check the archive's source")
                z.extractall(into)
        else:
            with tarfile.open(archive) as t:
                t.extractall(into, filter="data")
    except tarfile.FilterError as e:  # absolute paths, `..`, links leaving the folder, device files
        raise UserFacingError(f"archive {archive} has an unsafe member ({e}); it was not unpacked (members before it "
                              f"are in {base}). Check the archive's source") from None
    except (zipfile.BadZipFile, tarfile.ReadError, EOFError, zlib.error) as e:
        raise UserFacingError(f"{damaged} ({e})") from None


class Lock:
    """sha256 values computed on first download for files with no published checksum (trust on first use)."""

    def __init__(self, root: Path):
        self.path = root / LOCK_NAME
        self.data = json.loads(self.path.read_text()) if self.path.exists() else {}

    def get(self, rel: str) -> str | None:
        return self.data.get(rel, {}).get("sha256")

    def record(self, rel: str, url: str, sha256: str, size: int) -> None:
        self.data[rel] = {"sha256": sha256, "url": url, "size": size, "source": "computed on first download",
                          "recorded": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True))
        tmp.replace(self.path)


def _stamp(root: Path, rel: str) -> Path:
    return root / ".unpacked" / (rel.replace("/", "__") + ".json")


def fetch_entry(entry: dict, root: Path, lock: Lock) -> dict:
    """Download, verify and unpack one manifest entry (skipping work already done); returns its record."""
    rel, url = entry["path"], entry["url"]
    dest, stamp = root / rel, _stamp(root, rel)
    published = entry.get("sha256")
    expected = published or lock.get(rel)
    if stamp.exists():
        done = json.loads(stamp.read_text())
        if expected is None or done.get("sha256") == expected:
            return done
    if dest.exists() and (expected is None or file_digest(dest) == expected):
        sha = file_digest(dest) if expected is None else expected
    else:
        sha = download_file(url, dest, sha256=expected, md5=entry.get("md5"), size=entry.get("size"))
    if published:
        verified = "published sha256"
    elif lock.get(rel):
        verified = f"sha256 recorded in {lock.path.name}"
    else:
        lock.record(rel, url, sha, dest.stat().st_size)
        verified = "none published: computed sha256 recorded"
        log.warning("%s: no published checksum; recorded its sha256 %s in %s", rel, sha, lock.path)
    record = {"path": rel, "url": url, "sha256": sha, "verified": verified, "size": dest.stat().st_size}
    if entry.get("unpack"):
        into = root / entry.get("unpack_to", ".")
        unpack(dest, entry["unpack"], into)
        for inner in entry.get("unpack_inner", []):  # archives inside the archive (COCO panoptic PNG zips)
            unpack(into / inner, "zip" if inner.endswith(".zip") else "tar", (into / inner).parent)
        if not entry.get("keep_archive", False):
            dest.unlink()
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(json.dumps(record))
    return record


def download_dataset(name: str, root: str | Path | None, marker: str | Path) -> dict:
    """Fetch every file of manifest `name` under `root` (default: the manifest's), then write the marker JSON."""
    m = load_manifest(name)
    root = resolve_path(root or m["root"])
    marker = resolve_path(marker)
    if m.get("manual"):
        missing = [p for p in m["expect"] if not (root / p).exists()]
        if missing:
            raise UserFacingError(
                f"{m['name']} cannot be downloaded automatically (terms of use / registration). "
                f"Missing under {root}: {', '.join(missing)}.\n{m['instructions'].strip()}")
        records = [{"path": p, "verified": "manual: present"} for p in m["expect"]]
    else:
        root.mkdir(parents=True, exist_ok=True)
        lock = Lock(root)
        records = [fetch_entry(e, root, lock) for e in m["files"]]
    result = {"dataset": m["name"], "root": str(root), "manifest": str(manifest_path(name)), "files": records,
              "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    marker.parent.mkdir(parents=True, exist_ok=True)
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(marker)
    return result

