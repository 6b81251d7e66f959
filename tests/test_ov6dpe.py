"""The mini pose world (BOP layout, pairs), the registration steps and the Oryon protocol's geometry."""

import json

import numpy as np
import pytest
from PIL import Image

from declip.data import bop, mini_pose
from declip.evaluate import ov6dpe, registration
from declip.metrics import bop as metric

WCFG = dict(seed=0, n_objects=3, objects_per_scene=2, n_scenes=3, views_per_scene=2, width=96, height=72, fov_deg=60,
            floor_size=6.0, placement_radius=0.4, min_gap=0.05, scale_range=[0.6, 0.8], camera_distance=[0.9, 1.2],
            camera_height=[0.7, 1.0], min_visib=0.3, n_pairs=6, prompt="a {}")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("pose") / "mini_pose"
    counts = mini_pose.generate({"mini": {"worldpose": WCFG}}, root)
    return root, counts


def _rot(axis, a):
    return metric.axis_angle(axis, a)


def test_world_is_a_bop_dataset_with_pairs(world):
    root, counts = world
    assert (root / "MANIFEST.json").is_file() and counts["images"] == 6
    info = bop.load_json(root / "models" / "models_info.json")
    assert set(info) == {1, 2, 3} and all(v["diameter"] > 0 for v in info.values())
    pairs = json.loads((root / "pairs.json").read_text())
    targets = bop.load_targets(root)
    assert 0 < len(pairs) <= 6 and len(targets) == len(pairs)
    queries = {(p["query"]["scene_id"], p["query"]["im_id"], p["obj_id"]) for p in pairs}
    assert len(queries) == len(pairs)  # every query view scored once
    for p in pairs:
        assert p["anchor"]["scene_id"] != p["query"]["scene_id"] and p["name"] in p["prompt"]
        for ref in (p["anchor"], p["query"]):
            gts = bop.load_scene_gt(bop.scene_dir(root, "test", ref["scene_id"]) / "scene_gt.json")[ref["im_id"]]
            assert p["obj_id"] in [g["obj_id"] for g in gts]


def test_visib_fract_matches_masks(world):
    root, _ = world
    sdir = bop.scene_dir(root, "test", 1)
    infos = bop.load_json(sdir / "scene_gt_info.json")
    for k, inf in enumerate(infos[0]):
        vis = np.asarray(Image.open(sdir / "mask_visib" / f"000000_{k:06d}.png")) > 0
        full = np.asarray(Image.open(sdir / "mask" / f"000000_{k:06d}.png")) > 0
        assert np.all(full[vis]) and inf["visib_fract"] == pytest.approx(vis.sum() / full.sum())


def test_gt_poses_render_the_visible_depth(world):
    # the model (PLY, mm) rendered in its GT pose reproduces the frame's depth on its visible mask
    root, _ = world
    from declip.data import ply, raster

    sdir = bop.scene_dir(root, "test", 1)
    cam = bop.load_scene_camera(sdir / "scene_camera.json")[0]
    depth = bop.load_depth(sdir / "depth" / "000000.png") * cam["depth_scale"]
    for k, gt in enumerate(bop.load_scene_gt(sdir / "scene_gt.json")[0]):
        mesh = ply.read_ply(bop.model_path(root / "models", gt["obj_id"]))
        ren = raster.render_depth(mesh.vertices, mesh.faces, cam["K"], depth.shape[1], depth.shape[0], gt["R"], gt["t"])
        vis = np.asarray(Image.open(sdir / "mask_visib" / f"000000_{k:06d}.png")) > 0
        assert vis.any() and np.all(ren[vis] > 0)
        assert np.abs(ren[vis] - depth[vis]).max() <= 0.5 + 1e-6  # depth PNGs hold whole millimetres


def test_gt_estimates_score_100(world):
    root, _ = world
    ests = []
    for t in bop.load_targets(root):
        g = [g for g in bop.load_scene_gt(bop.scene_dir(root, "test", t["scene_id"]) / "scene_gt.json")[t["im_id"]]
             if g["obj_id"] == t["obj_id"]][0]
        ests.append(bop.Estimate(t["scene_id"], t["im_id"], t["obj_id"], 1.0, g["R"], g["t"]))
    out = metric.evaluate(root, ests)
    assert out["AR"] == out["AR_VSD"] == out["AR_MSSD"] == out["AR_MSPD"] == out["ADDS"] == 100.0


def test_mutual_nn_keeps_only_mutual_pairs():
    fa = np.array([[1.0, 0], [0.8, 0.6], [0, 1.0]])
    fb = np.array([[0.96, 0.28], [0.0, 1.0]])
    # rows: a0 -> b0 (.96), a1 -> b0 (.936), a2 -> b1 (1); columns: b0 -> a0 (.96 > .936), b1 -> a2
    i, j = registration.mutual_nn(fa, fb)
    assert list(zip(i.tolist(), j.tolist())) == [(0, 0), (2, 1)]


def test_lift_inverts_the_projection():
    K = np.array([[100.0, 0, 40], [0, 110.0, 30], [0, 0, 1]])
    p = registration.lift(np.array([40.0, 140.0]), np.array([30.0, 85.0]), np.array([500.0, 1000.0]), K)
    np.testing.assert_allclose(p, [[0, 0, 500], [1000, 500, 1000]])


def test_kabsch_and_ransac_recover_a_rigid_motion():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(60, 3)) * 100
    R, t = _rot([1, 2, 3], 0.7), np.array([10.0, -20, 300])
    dst = src @ R.T + t
    Rk, tk = registration.kabsch(src, dst)
    np.testing.assert_allclose(Rk, R, atol=1e-9)
    np.testing.assert_allclose(tk, t, atol=1e-6)
    dst_noisy = dst.copy()
    dst_noisy[:20] = rng.normal(size=(20, 3)) * 300  # a third outliers
    fit = registration.ransac(src, dst_noisy, threshold=1.0, iterations=300, seed=3)
    np.testing.assert_allclose(fit.R, R, atol=1e-6)
    assert fit.inliers[20:].all() and not fit.inliers[:20].any()
    again = registration.ransac(src, dst_noisy, threshold=1.0, iterations=300, seed=3)
    np.testing.assert_array_equal(fit.inliers, again.inliers)
    assert registration.ransac(src[:2], dst[:2], 1.0, 10, 0) is None


def test_text_mask_thresholds_normalised_similarity():
    # similarities 3, -1, 1.4, -0.2 -> min-max 1, 0, .6, .2
    mask = ov6dpe.text_mask(np.array([[3.0, -1.0], [1.4, -0.2]]), 0.5)
    np.testing.assert_array_equal(mask, [[True, False], [True, False]])


def test_dense_map_reads_tokens_at_pixel_centres():
    import torch

    # a 2-token-wide map over a letterbox of size 4 holding a 4 x 2 image (h=2, w=4): image pixel u has its
    # centre at letterbox x = u + 0.5, token centres at 1 and 3 => u = 0 -> token 0, u = 3 -> token 1
    # (border), u = 1 -> 3/4 of token 0 + 1/4 of token 1 (before L2 normalisation)
    tokens = torch.zeros(1, 2, 2, 2)
    tokens[0, 0, :, 0] = 1.0  # token column 0 = e0
    tokens[0, 1, :, 1] = 1.0  # token column 1 = e1
    dm = ov6dpe.DenseMap(tokens, (2, 4), (2, 4), 4)
    f = dm.sample(np.array([0, 1, 3]), np.array([0, 0, 1]))
    np.testing.assert_allclose(f[0], [1, 0], atol=1e-6)
    np.testing.assert_allclose(f[1], np.array([0.75, 0.25]) / np.hypot(0.75, 0.25), atol=1e-6)
    np.testing.assert_allclose(f[2], [0, 1], atol=1e-6)
    sim = dm.similarity(np.array([2.0, 0.0]))
    assert sim.shape == (2, 4) and sim[0, 0] == pytest.approx(1.0) and sim[1, 3] == pytest.approx(0.0, abs=1e-6)


class _ArrayFeatures:
    def __init__(self, arr):
        self.arr = arr

    def sample(self, u, v):
        return self.arr[:, v, u].T


def _coordinate_features(view, obj_id, freqs):
    """Per-pixel features that identify the model-frame point seen there (perfect descriptors)."""
    g = view.gt[view.instance(obj_id)]
    h, w = view.depth.shape
    v, u = np.mgrid[0:h, 0:w]
    cam = registration.lift(u.ravel().astype(float), v.ravel().astype(float), view.depth.ravel(), view.K)
    model = (cam - g["t"].ravel()) @ g["R"]  # R^T (X - t)
    f = np.concatenate([np.sin(model @ freqs), np.cos(model @ freqs)], 1)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    return _ArrayFeatures(f.T.reshape(-1, h, w))


def test_protocol_geometry_with_perfect_features(world):
    # With features that name the model point, mutual NN + RANSAC + T_rel * anchor pose recovers the query pose
    root, _ = world
    pairs = json.loads((root / "pairs.json").read_text())
    freqs = np.random.default_rng(0).normal(size=(3, 32)) / 40.0
    ocfg = {"max_points": 400, "ransac_threshold_mm": 20.0, "ransac_iterations": 500}
    scenes, ests = {}, []
    for p in pairs:
        va = ov6dpe.View(root, "test", p["anchor"]["scene_id"], p["anchor"]["im_id"], scenes)
        vb = ov6dpe.View(root, "test", p["query"]["scene_id"], p["query"]["im_id"], scenes)
        obj = p["obj_id"]
        est, n = ov6dpe.estimate_pair(_coordinate_features(va, obj, freqs), _coordinate_features(vb, obj, freqs),
                                      va.visible_mask(obj), vb.visible_mask(obj), va, vb, obj, ocfg, seed=p["pair"])
        assert n >= 3
        R, t, score = est
        ests.append(bop.Estimate(vb.scene_id, vb.im_id, obj, score, R, t.reshape(3, 1)))
    out = metric.evaluate(root, ests)
    assert out["AR_MSSD"] >= 90 and out["AR"] >= 80


def test_table_rows_per_dataset_mask_variant_without_paper_numbers(tmp_path):
    import csv

    from declip.tables import registry
    from declip.tables.render import render_tables

    root = tmp_path / "eval"
    vals = {"clip": 10.0, "declip": 14.5}
    for mask in ("oracle", "text"):
        for v, ar in vals.items():
            p = root / "ov6dpe" / "mini_pose" / mask / v / "metrics.json"
            p.parent.mkdir(parents=True)
            p.write_text(json.dumps({"AR": ar, "AR_VSD": 1.0, "AR_MSSD": 2.0, "AR_MSPD": 3.0, "ADDS": 4.0}))
    cfg = {"preset": "mini", "evaluate": {"ov6dpe": {"datasets": ["mini_pose"], "masks": ["oracle", "text"],
                                                     "variants": ["clip", "clipself", "declip"]}}}
    out = tmp_path / "tables"
    render_tables(root, out, ["ov6dpe"], cfg=cfg)
    with open(out / "ov6dpe.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["dataset"], r["mask"], r["variant"]) for r in rows] == [
        ("mini_pose", "oracle", "clip"), ("mini_pose", "oracle", "declip"),
        ("mini_pose", "text", "clip"), ("mini_pose", "text", "declip")]  # clipself: no metrics, no row
    assert rows[1]["AR"] == "14.5" and rows[1]["ADDS"] == "4.0" and "AR.paper" not in rows[0]
    assert not [r for r in registry.REFERENCES if r.metric.family == registry.OV6DPE]  # protocols.md: gains only
    md = (out / "ov6dpe.md").read_text()
    assert "ADD(S)-0.1d" in md and "+2.3 to +5.4" in md


def _fake_model(*_args, **_kwargs):
    """A stand-in CLIP whose 'dense map' is the 8x8-pooled colour (3 channels) and whose text is a colour."""
    import torch
    from types import SimpleNamespace

    class Dense(torch.nn.Module):
        def forward(self, images):
            return SimpleNamespace(content=torch.nn.functional.avg_pool2d(images, 8) + 1e-3)

    def text(names, templates):
        return torch.tensor([[1.0, 0.2, 0.1]] * len(names)), list(range(len(names)))

    return SimpleNamespace(dense=Dense(), text=text, device=torch.device("cpu"))


@pytest.mark.parametrize("mask", ["oracle", "text"])
def test_main_writes_bop_csv_and_metrics(world, tmp_path, monkeypatch, mask):
    import argparse

    import declip.evaluate.text as text
    from declip.config import load

    root, _ = world
    monkeypatch.setattr(text, "load_eval_model", _fake_model)
    cfg = load(overrides={"evaluate": {"ov6dpe": {"ransac_iterations": 100, "max_points": 100}}})
    out = tmp_path / "metrics.json"
    args = argparse.Namespace(variant="clip", checkpoint=None, data=str(root), dataset=None, out=str(out), mask=mask,
                              device="cpu")
    ret = ov6dpe.main(args, cfg)
    m = json.loads(out.read_text())
    csv = tmp_path / m["results_csv"]
    assert ret["artifacts"] == [str(out), str(csv)] and csv.name == f"clip-{mask}_minipose-test.csv"
    assert csv.read_text().startswith("scene_id,im_id,obj_id,score,R,t,time\n")
    assert m["n_pairs"] == m["n_targets"] == len(json.loads((root / "pairs.json").read_text()))
    assert all(0.0 <= m[k] <= 100.0 for k in ("AR", "AR_VSD", "AR_MSSD", "AR_MSPD", "ADDS"))
    assert (m["text_mask_iou"] is None) == (mask == "oracle")
    # metrics.json holds the scores of the written BOP file (the format is what gets evaluated)
    again = metric.evaluate(root, bop.read_results(csv))
    assert again["AR"] == m["AR"]
