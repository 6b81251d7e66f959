"""The mini 3D world: determinism, ScanNet-layout files, GT semantics, rendering, and the reader."""

import json

import numpy as np
import pytest
from PIL import Image

from declip.config import load
from declip.data import mini3d, render3d, scannet
from declip.data.scannet200 import ID_OF, SPLIT_OF
from declip.data.vocab import THINGS
from declip.errors import UserFacingError


@pytest.fixture(scope="module")
def small_cfg():
    return load(overrides={"mini": {"world3d": {"n_scenes": 2, "n_frames": 6, "width": 64, "height": 48}}})


@pytest.fixture(scope="module")
def world(small_cfg, tmp_path_factory):
    out = tmp_path_factory.mktemp("mini3d")
    counts = mini3d.generate(small_cfg, out)
    return out, counts


def test_scene_is_deterministic_for_a_seed(small_cfg):
    w = small_cfg["mini"]["world3d"]
    a, b = mini3d.build_scene(0, 1, w), mini3d.build_scene(0, 1, w)
    assert np.array_equal(a.vertices, b.vertices) and np.array_equal(a.gt, b.gt) and np.array_equal(a.poses, b.poses)
    c = mini3d.build_scene(1, 1, w)
    assert a.vertices.shape != c.vertices.shape or not np.array_equal(a.vertices, c.vertices)


def test_categories_cover_every_thing_and_split():
    w = load()["mini"]["world3d"]
    cats = [c.name for i in range(w["n_scenes"]) for c in mini3d.scene_categories(w["seed"], i, w)]
    assert set(cats) == {c.name for c in THINGS}
    assert {SPLIT_OF[n] for n in cats} == {"head", "common", "tail"}


def test_gt_follows_the_scannet_instance_format(small_cfg):
    s = mini3d.build_scene(0, 0, small_cfg["mini"]["world3d"])
    labels = np.unique(s.gt // 1000)
    assert set(labels) <= {c.scannet_id for c in THINGS} | {ID_OF["wall"], ID_OF["floor"]}
    assert ID_OF["floor"] in labels and ID_OF["wall"] in labels
    ids, counts = np.unique(s.gt, return_counts=True)
    assert (ids % 1000 >= 1).all() and len(np.unique(ids % 1000)) == len(ids)  # one instance number per id
    obj = np.isin(ids, s.object_ids)
    assert (counts[obj] >= 100).all()
    assert obj.sum() == len(s.object_ids) >= small_cfg["mini"]["world3d"]["min_objects"]


def test_generated_files(world, small_cfg):
    out, counts = world
    w = small_cfg["mini"]["world3d"]
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert manifest["counts"] == counts and counts["scenes"] == 2 and counts["frames"] == 12
    names = (out / "val.txt").read_text().split()
    assert names == manifest["scenes"] == ["scene0000_00", "scene0001_00"]
    scene = scannet.load_scene(out, names[0])
    gt = scannet.load_gt(out, names[0])
    assert scene.vertices.shape == (len(gt), 6) and scene.frame_ids == list(range(6))
    depth = scene.depth(3)
    assert depth.shape == (48, 64) and 0.3 < np.median(depth) < 6.0
    raw = np.asarray(Image.open(out / "scans" / names[0] / "depth" / "3.png"))
    assert raw.dtype == np.uint16
    assert scene.color(3).shape == (48, 64, 3)
    # the stored depth is the z-buffer of the generator's own render of that frame
    built = mini3d.build_scene(w["seed"], 0, w)
    frame = render3d.render(built.surface, built.vertices[:, 3:].astype(float), scene.pose(3), scene.K_depth, 64, 48)
    assert np.abs(frame.depth - depth).max() < 1e-3
    masks, conf = scannet.load_proposals(out, "proposals", "openmask3d", names[0], len(gt))
    assert sorted(np.unique(gt[m])[0] for m in masks) == sorted(built.object_ids)
    assert all(len(np.unique(gt[m])) == 1 for m in masks) and (conf == 1).all()
    masks2, _ = scannet.load_proposals(out, "proposals", "open3dis", names[0], len(gt))
    assert len(masks2) >= len(masks) and (masks2[:len(masks)] == masks).all()


def test_reader_errors_name_the_fix(tmp_path):
    with pytest.raises(UserFacingError, match="Terms of Use"):
        scannet.list_scenes(tmp_path / "nothing")
    with pytest.raises(UserFacingError, match="host"):
        scannet.load_proposals(tmp_path, "proposals", "mask3d", "s", 10)


def test_ply_reader(tmp_path):
    verts = np.array([(0.0, 1.0, 2.0, 10, 20, 30), (3.0, 4.0, 5.0, 40, 50, 60)],
                     dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    header = ("ply\nformat binary_little_endian 1.0\nelement vertex 2\nproperty float x\nproperty float y\n"
              "property float z\nproperty uchar red\nproperty uchar green\nproperty uchar blue\n"
              "element face 0\nproperty list uchar int vertex_indices\nend_header\n")
    (tmp_path / "a.ply").write_bytes(header.encode() + verts.tobytes())
    got = scannet.read_ply_vertices(tmp_path / "a.ply")
    assert got.tolist() == [[0, 1, 2, 10, 20, 30], [3, 4, 5, 40, 50, 60]]
