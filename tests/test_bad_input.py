"""Bad input, as probed by users (issue 10, item 6): each case feeds the bad input and checks the message,
that nothing was lost and that nothing was written outside the folder it belongs to."""

from __future__ import annotations

import http.server
import io
import logging
import tarfile
import threading
import zipfile

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from declip import config as C
from declip.data import download as dl
from declip.data.images import load_image
from declip.data.scannet import load_proposals
from declip.errors import UserFacingError
from declip.metrics import scannet200 as m

import test_trainer as TT
from test_trainer import one_thread, world  # noqa: F401 (fixtures: the tiny distillation world)


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# --- proposals: loading a user-supplied file runs no code -----------------------------------------------
class _Exploit:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):  # what a crafted file does on a plain pickle load
        return (open, (self.marker, "w"))


def test_crafted_proposal_file_is_refused_without_running_code(tmp_path):
    folder = tmp_path / "proposals" / "open3dis"
    folder.mkdir(parents=True)
    marker = tmp_path / "outside" / "pwned"
    marker.parent.mkdir()
    torch.save({"ins": torch.ones(2, 5), "conf": torch.ones(2), "payload": _Exploit(marker)}, folder / "scene0000_00.pth")
    with pytest.raises(UserFacingError, match=r"scene0000_00\.pth .*not loaded \(loading it could run code\)"):
        load_proposals(tmp_path, "proposals", "open3dis", "scene0000_00", 5)
    assert not marker.exists()
    assert (folder / "scene0000_00.pth").exists()  # the user's file is left as it was


def test_plain_tensor_proposal_files_still_load(tmp_path):
    folder = tmp_path / "proposals" / "open3dis"
    folder.mkdir(parents=True)
    ins = torch.tensor([[1, 0, 1, 0, 0], [0, 1, 0, 0, 1]])
    torch.save({"ins": ins, "conf": torch.tensor([0.9, 0.5])}, folder / "scene0000_00.pth")
    masks, scores = load_proposals(tmp_path, "proposals", "open3dis", "scene0000_00", 5)
    assert masks.tolist() == (ins > 0).tolist() and np.allclose(scores, [0.9, 0.5])
    om = tmp_path / "proposals" / "openmask3d"
    om.mkdir()
    torch.save(ins.T.contiguous(), om / "scene0000_00_masks.pt")  # released as (N_vertices, K)
    masks, _ = load_proposals(tmp_path, "proposals", "openmask3d", "scene0000_00", 5)
    assert masks.tolist() == (ins > 0).tolist()


# --- a truncated image names the file, the dataset and the fix ------------------------------------------
def test_truncated_image_names_file_dataset_and_fix(tmp_path):
    world = tmp_path / "data" / "mini2d"
    (world / "train").mkdir(parents=True)
    (world / "MANIFEST.json").write_text("{}")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(buf, "JPEG")
    path = world / "train" / "000001.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    before = _files(tmp_path)
    with pytest.raises(UserFacingError) as err:
        load_image(path)
    msg = str(err.value)
    assert str(path) in msg and f"the dataset in {world}" in msg and "Rebuild the dataset" in msg
    assert _files(tmp_path) == before


def test_truncated_downloaded_image_says_how_to_redownload(tmp_path):
    root = tmp_path / "coco"
    (root / "val2017").mkdir(parents=True)
    (root / dl.LOCK_NAME).write_text("{}")
    path = root / "val2017" / "1.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    with pytest.raises(UserFacingError, match=r"1\.png of the dataset in .*coco is unreadable.*Re-download"):
        load_image(path)


# --- ScanNet200 scoring: missing scenes counted, invalid values rejected with file and line ---------------
def _scene(folder, scene, gt_ids, preds):
    (folder / "gt").mkdir(exist_ok=True)
    np.savetxt(folder / "gt" / f"{scene}.txt", gt_ids, fmt="%d")
    if preds is not None:
        m.write_predictions(folder / "pred", scene, preds)


def test_scannet200_counts_and_warns_about_scenes_without_predictions(tmp_path, caplog):
    label = int(sorted(m._VALID_IDS)[0])
    gt = np.array([label * 1000 + 1] * 150 + [0] * 50)
    _scene(tmp_path, "scene0000_00", gt, [m.Prediction(gt > 0, label, 0.9)])
    for k in range(1, 4):
        _scene(tmp_path, f"scene000{k}_00", gt, None)
    with caplog.at_level(logging.WARNING):
        out = m.score_folders(tmp_path / "gt", tmp_path / "pred")
    assert out["scenes"] == 4 and out["scenes_missing"] == 3
    assert "3 of 4 GT scenes have no prediction file" in caplog.text
    # Independent count: 1 true positive among 4 GT instances at score 0.9 -> precision 1 up to recall 1/4.
    assert out["AP50"] is not None and 0 < out["AP50"] < 100


@pytest.mark.parametrize("line, error", [
    ("pred_mask/scene0000_00_0.txt 99999 0.5", r"label id 99999 is not a ScanNet200 instance class id"),
    ("pred_mask/scene0000_00_0.txt 1 0.5", r"label id 1 is not a ScanNet200 instance class id"),  # wall
    ("pred_mask/scene0000_00_0.txt {label} nan", r"confidence 'nan' is not a finite number"),
    ("pred_mask/scene0000_00_0.txt chair 0.5", r"the label id must be an integer"),
])
def test_scannet200_rejects_invalid_prediction_lines_with_file_and_line(tmp_path, line, error):
    label = int(sorted(m._VALID_IDS)[0])
    gt = np.array([label * 1000 + 1] * 150 + [0] * 50)
    _scene(tmp_path, "scene0000_00", gt, [m.Prediction(gt > 0, label, 0.9)])
    pred_file = tmp_path / "pred" / "scene0000_00.txt"
    pred_file.write_text(pred_file.read_text() + line.format(label=label) + "\n")
    with pytest.raises(UserFacingError, match=rf"scene0000_00\.txt:2: {error}"):
        m.score_folders(tmp_path / "gt", tmp_path / "pred")


# --- archives, manifest paths and downloads of unknown length ---------------------------------------------
def test_tar_with_a_member_escaping_the_folder_is_a_clear_error(tmp_path):
    archive = tmp_path / "dl" / "evil.tar"
    archive.parent.mkdir()
    with tarfile.open(archive, "w") as t:
        for name, body in (("ok.txt", b"fine"), ("../escaped.txt", b"bad")):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            t.addfile(info, io.BytesIO(body))
    into = tmp_path / "dl" / "into"
    with pytest.raises(UserFacingError, match=r"evil\.tar has an unsafe member .*not unpacked"):
        dl.unpack(archive, "tar", into)
    assert not (tmp_path / "dl" / "escaped.txt").exists() and archive.exists()


def test_zip_with_a_member_escaping_the_folder_unpacks_nothing(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("ok.txt", "fine")
        z.writestr("../../escaped.txt", "bad")
    into = tmp_path / "a" / "b"
    with pytest.raises(UserFacingError, match=r"unsafe member '\.\./\.\./escaped\.txt'.*nothing was unpacked"):
        dl.unpack(archive, "zip", into)
    assert _files(into) == [] and not (tmp_path / "escaped.txt").exists()


def test_truncated_archive_is_a_clear_error(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a.txt", "x" * 1000)
    archive = tmp_path / "cut.zip"
    archive.write_bytes(buf.getvalue()[:40])
    with pytest.raises(UserFacingError, match=r"cut\.zip is damaged or truncated; delete it"):
        dl.unpack(archive, "zip", tmp_path / "into")


@pytest.mark.parametrize("entry, key", [
    ({"path": "../../etc/x", "url": "http://h/x", "sha256": None}, "path"),
    ({"path": "/abs/x", "url": "http://h/x", "sha256": None}, "path"),
    ({"path": "x.zip", "url": "http://h/x", "sha256": None, "unpack": "zip", "unpack_to": "a/../../b"}, "unpack_to"),
])
def test_manifest_paths_are_confined_to_the_dataset_folder(tmp_path, entry, key):
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(yaml.safe_dump({"name": "bad", "root": "data/bad", "files": [entry]}))
    with pytest.raises(UserFacingError, match=rf"`{key}` .* points outside the dataset folder"):
        dl.load_manifest(str(manifest))


class _NoLength(http.server.BaseHTTPRequestHandler):
    """Serves a body without Content-Length (connection-close framing), cut short when asked."""
    body = b""

    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(self.body)
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture()
def no_length_server():
    httpd = http.server.HTTPServer(("127.0.0.1", 0), _NoLength)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/f.bin"
    httpd.shutdown()
    httpd.server_close()


def test_download_of_unknown_length_without_checksum_is_refused(no_length_server, tmp_path):
    _NoLength.body = b"x" * 500  # the server cut it: no way to tell without a size or checksum
    dest = tmp_path / "root" / "f.bin"
    with pytest.raises(UserFacingError, match=r"cannot be checked for completeness: no sha256 or `size`"):
        dl.download_file(no_length_server, dest, retries=0)
    assert _files(tmp_path / "root") == []


def test_manifest_size_catches_a_truncated_download(no_length_server, tmp_path):
    _NoLength.body = b"x" * 500
    dest = tmp_path / "root" / "f.bin"
    with pytest.raises(UserFacingError, match=r"has 500 bytes, the manifest says 1000"):
        dl.download_file(no_length_server, dest, retries=0, size=1000)
    assert _files(tmp_path / "root") == []
    assert len(dl.download_file(no_length_server, dest, retries=0, size=500)) == 64 and dest.stat().st_size == 500


# --- config values checked before any job ----------------------------------------------------------------
def test_variant_presets_from_the_command_line_accept_numbers():
    # Snakemake's --config 'variant_presets={v: {lambda_context: 0.4}}' hands nested values over as strings.
    cfg = C.load(overrides={"variant_presets": {"mine": {"lambda_context": "0.4", "rcc_grid": "5", "rcc": "false"}},
                            "variants": ["mine"]})
    method = C.variant_method(cfg, "mine")
    assert method["lambda_context"] == 0.4 and method["rcc_grid"] == 5 and method["rcc"] is False


@pytest.mark.parametrize("override, key", [
    ({"seed": -5}, "seed"),
    ({"mini": {"pretrain": {"steps": 0}}}, "mini.pretrain.steps"),
    ({"evaluate": {"tfseg": {"stride": 0}}}, "evaluate.tfseg.stride"),
])
def test_out_of_range_values_stop_before_any_job(override, key):
    with pytest.raises(C.ConfigError, match=rf"config key `{key}`"):
        C.load(overrides=override)


def test_trainable_blocks_beyond_the_students_depth_is_refused():
    cfg = C.load(overrides={"variant_presets": {"blocks_9": {"trainable_blocks": 9}}})
    C.check_variants_fit_student(cfg)  # defined but not run: fine
    cfg["variants"].append("blocks_9")
    with pytest.raises(C.ConfigError, match=r"`variant_presets.blocks_9.trainable_blocks`.*9 but the student "
                                            r"declip-mini-vit has 4 image blocks; allowed values: 1..4"):
        C.check_variants_fit_student(cfg)


def test_snakemake_stops_on_a_bad_value_before_any_job(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "snakemake", "results/table2.csv", "-n", "--directory", str(tmp_path),
                        "-s", str(C.ROOT / "Snakefile"), "--config", "seed=-5", "variants=[blocks_4]"], capture_output=True, text=True,
                       cwd=C.ROOT, timeout=300)
    assert r.returncode != 0 and "config key `seed`" in r.stdout + r.stderr
    assert not (tmp_path / "data").exists() and not (tmp_path / "results").exists()


# --- an interrupted distillation keeps the loss curve with its checkpoint ---------------------------------
def test_resumed_distillation_curve_is_whole_after_snakemake_deleted_it(world, tmp_path):
    TT._run(world, tmp_path / "full")

    class Killed(Exception):
        pass

    def kill(step, terms):
        if step == 3:  # after the step-2 checkpoint
            raise Killed

    with pytest.raises(Killed):
        TT._run(world, tmp_path / "resumed", on_step_end=kill)
    (tmp_path / "resumed" / "losses.jsonl").unlink()  # what Snakemake does to an interrupted job's outputs
    TT._run(world, tmp_path / "resumed")
    strip = lambda recs: [{k: v for k, v in r.items() if k != "images_per_s"} for r in recs]  # noqa: E731
    full, resumed = (strip(TT._records(tmp_path / d / "losses.jsonl")) for d in ("full", "resumed"))
    assert [r["step"] for r in resumed] == list(range(1, 7)) and resumed == full
    assert not any((tmp_path / "resumed" / "state").glob("*"))  # state and its curve copy go with the final model
