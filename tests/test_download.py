"""The manifest downloader against a local HTTP server on 127.0.0.1 (no internet)."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import threading
import zipfile

import pytest
import yaml

from declip.data import download as dl
from declip.errors import UserFacingError


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves in-memory files with HTTP Range support; can cut the first response short."""

    files: dict[str, bytes] = {}
    log: list[tuple[str, str | None]] = []
    truncate_first: set[str] = set()

    def do_GET(self):  # noqa: N802 (http.server API)
        rng = self.headers.get("Range")
        type(self).log.append((self.path, rng))
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        if start >= len(body):
            self.send_error(416)
            return
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        payload = body[start:]
        if self.path in self.truncate_first:  # announce the full length, send half, drop the connection
            self.truncate_first.discard(self.path)
            payload = payload[: len(payload) // 2]
            self.close_connection = True
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    _Handler.files, _Handler.log, _Handler.truncate_first = {}, [], set()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", _Handler
    httpd.shutdown()
    httpd.server_close()


def _payload(n: int, seed: int = 0) -> bytes:
    import numpy as np

    return np.random.default_rng(seed).integers(0, 256, size=n, dtype=np.uint8).tobytes()


def test_resume_from_partial_file(server, tmp_path):
    base, handler = server
    body = _payload(300_000)
    handler.files["/a.bin"] = body
    dest = tmp_path / "a.bin"
    (tmp_path / "a.bin.part").write_bytes(body[:100_000])
    sha = dl.download_file(f"{base}/a.bin", dest, sha256=hashlib.sha256(body).hexdigest())
    assert dest.read_bytes() == body
    assert sha == hashlib.sha256(body).hexdigest()
    assert handler.log == [("/a.bin", "bytes=100000-")]
    assert not (tmp_path / "a.bin.part").exists()


def test_truncated_transfer_is_retried_and_resumed(server, tmp_path):
    base, handler = server
    body = _payload(200_000, seed=1)
    handler.files["/b.bin"] = body
    handler.truncate_first.add("/b.bin")
    dl.download_file(f"{base}/b.bin", tmp_path / "b.bin", sha256=hashlib.sha256(body).hexdigest(), backoff=0.01)
    assert (tmp_path / "b.bin").read_bytes() == body
    assert handler.log[0] == ("/b.bin", None)
    assert handler.log[1] == ("/b.bin", "bytes=100000-")


def test_checksum_mismatch_is_an_error_naming_file_and_url(server, tmp_path):
    base, handler = server
    handler.files["/c.bin"] = b"not what the manifest says"
    with pytest.raises(UserFacingError) as err:
        dl.download_file(f"{base}/c.bin", tmp_path / "c.bin", sha256="0" * 64)
    assert "c.bin" in str(err.value) and f"{base}/c.bin" in str(err.value) and "mismatch" in str(err.value)
    assert not (tmp_path / "c.bin").exists() and not (tmp_path / "c.bin.part").exists()


def test_missing_file_fails_without_retrying(server, tmp_path):
    base, handler = server
    with pytest.raises(UserFacingError, match="HTTP 404"):
        dl.download_file(f"{base}/missing.zip", tmp_path / "m.zip", backoff=0.01)
    assert len(handler.log) == 1


def test_manifest_zip_unpack_lock_and_marker(server, tmp_path):
    base, handler = server
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("images/000001.txt", "hello")
        z.writestr("annotations/x.json", json.dumps({"k": 1}))
    archive = buf.getvalue()
    handler.files["/data.zip"] = archive
    manifest = tmp_path / "toy.yaml"
    manifest.write_text(yaml.safe_dump({"name": "toy", "root": str(tmp_path / "unused"), "files": [
        {"path": "data.zip", "url": f"{base}/data.zip", "sha256": None, "unpack": "zip"}]}))
    root, marker = tmp_path / "root", tmp_path / "done" / "toy.json"
    result = dl.download_dataset(str(manifest), root, marker)
    assert (root / "images" / "000001.txt").read_text() == "hello"
    assert json.loads((root / "annotations" / "x.json").read_text()) == {"k": 1}
    assert not (root / "data.zip").exists()  # archives are removed after unpacking unless keep_archive
    lock = json.loads((root / dl.LOCK_NAME).read_text())
    assert lock["data.zip"]["sha256"] == hashlib.sha256(archive).hexdigest()
    assert json.loads(marker.read_text())["files"][0]["sha256"] == hashlib.sha256(archive).hexdigest()
    assert "recorded" in result["files"][0]["verified"]
    n_requests = len(handler.log)
    dl.download_dataset(str(manifest), root, marker)  # already unpacked and verified: no new request
    assert len(handler.log) == n_requests


def test_manual_manifest_prints_instructions(tmp_path):
    manifest = tmp_path / "terms.yaml"
    manifest.write_text(yaml.safe_dump({"name": "terms", "root": str(tmp_path), "manual": True,
                                        "instructions": "Sign the form at example.org", "expect": ["scans"]}))
    with pytest.raises(UserFacingError, match="Sign the form at example.org"):
        dl.download_dataset(str(manifest), None, tmp_path / "m.json")
    (tmp_path / "scans").mkdir()
    assert dl.download_dataset(str(manifest), None, tmp_path / "m.json")["files"][0]["path"] == "scans"


def test_shipped_manifests_are_well_formed():
    names = dl.available()
    for required in ("coco", "voc2012", "ade20k", "weights", "cityscapes", "scannet"):
        assert required in names
    for name in names:
        m = dl.load_manifest(name)
        for f in m.get("files", []):
            assert f["sha256"] is None or (len(f["sha256"]) == 64 and int(f["sha256"], 16) >= 0)
    weights = {f["path"] for f in dl.load_manifest("weights")["files"]}
    assert {"EVA02_CLIP_B_psz16_s8B.pt", "EVA02_CLIP_L_336_psz14_s6B.pt",
            "stable-diffusion-2-1-base/unet/diffusion_pytorch_model.safetensors"} <= weights
