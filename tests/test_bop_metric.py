"""`declip score bop` rule by rule (bop_toolkit eval_bop19_pose semantics) on hand-made BOP datasets.

Expected values are derived by hand from the geometry (cube corners, translations, pixel rays), never by
calling the scorer twice.
"""

import json

import numpy as np
import pytest
from PIL import Image

from declip.data import bop, ply
from declip.metrics import bop as metric

F, W, H = 300.0, 320, 240
K = np.array([[F, 0, 159.5], [0, F, 119.5], [0, 0, 1.0]])
CUBE_EDGE = 100.0
CUBE_DIAM = CUBE_EDGE * np.sqrt(3)
SLAB = 2000.0, 10.0  # side, thickness (mm): fills the image at 1 m
SLAB_DIAM = float(np.sqrt(2 * SLAB[0] ** 2 + SLAB[1] ** 2))
RZ90 = np.array([[0, -1.0, 0], [1, 0, 0], [0, 0, 1]])
T0 = np.array([[0.0], [0.0], [1000.0]])


def _box(sx, sy, sz):
    v = np.array([[x, y, z] for x in (-sx / 2, sx / 2) for y in (-sy / 2, sy / 2) for z in (-sz / 2, sz / 2)])
    f = [[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
         [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]]
    return ply.Mesh(v, np.array(f))


def _prism(r, h, n=64):
    a = 2 * np.pi * np.arange(n) / n
    ring = np.stack([r * np.cos(a), r * np.sin(a)], 1)
    v = np.concatenate([np.column_stack([ring, np.full(n, -h / 2)]), np.column_stack([ring, np.full(n, h / 2)])])
    f = [[i, (i + 1) % n, n + i] for i in range(n)] + [[(i + 1) % n, n + (i + 1) % n, n + i] for i in range(n)]
    f += [[0, i, i + 1] for i in range(1, n - 1)] + [[n, n + i + 1, n + i] for i in range(1, n - 1)]
    return ply.Mesh(v, np.array(f))


def make_dataset(root, images: dict, targets: list, width: int = W, depth: dict | None = None):
    """images: {im_id: [(obj_id, R, t, visib_fract)]} in scene 1; targets: (im_id, obj_id, inst_count)."""
    models = root / "models"
    models.mkdir(parents=True)
    ply.write_ply(models / "obj_000001.ply", _box(CUBE_EDGE, CUBE_EDGE, CUBE_EDGE))  # no symmetry declared
    ply.write_ply(models / "obj_000002.ply", _box(CUBE_EDGE, CUBE_EDGE, CUBE_EDGE))  # declares Rz(90)
    ply.write_ply(models / "obj_000003.ply", _prism(40.0, 80.0))  # continuous about z
    ply.write_ply(models / "obj_000004.ply", _box(SLAB[0], SLAB[0], SLAB[1]))
    rz = np.eye(4)
    rz[:3, :3] = RZ90
    info = {"1": {"diameter": CUBE_DIAM}, "2": {"diameter": CUBE_DIAM, "symmetries_discrete": [rz.ravel().tolist()]},
            "3": {"diameter": float(np.hypot(80.0, 80.0)),
                  "symmetries_continuous": [{"axis": [0, 0, 1], "offset": [0, 0, 0]}]},
            "4": {"diameter": SLAB_DIAM}}
    (models / "models_info.json").write_text(json.dumps(info))
    (root / "camera.json").write_text(json.dumps({"width": width, "height": H}))
    scene = root / "test" / "000001"
    (scene / "depth").mkdir(parents=True)
    kk = K.ravel().tolist()  # same camera whatever the declared width: only the normalisation changes
    bop.save_json(scene / "scene_camera.json", {str(i): {"cam_K": kk, "depth_scale": 0.1} for i in images})
    bop.save_json(scene / "scene_gt.json", {str(i): [{"obj_id": o, **bop.pose_to_json(R, t)} for o, R, t, _ in g]
                                            for i, g in images.items()})
    bop.save_json(scene / "scene_gt_info.json", {str(i): [{"visib_fract": v} for *_, v in g] for i, g in images.items()})
    for i in images:
        d = depth[i] if depth and i in depth else np.zeros((H, width))
        Image.fromarray(np.rint(d / 0.1).astype(np.uint16)).save(scene / "depth" / f"{i:06d}.png")
    bop.save_json(root / "test_targets_bop19.json",
                  [{"scene_id": 1, "im_id": i, "obj_id": o, "inst_count": n} for i, o, n in targets])
    return root


def est(im, obj, R, t, score=1.0):
    return bop.Estimate(1, im, obj, score, np.asarray(R, float), np.asarray(t, float).reshape(3, 1))


def score(root, ests, **kw):
    return metric.evaluate(root, ests, with_vsd=kw.pop("with_vsd", False), **kw)


def shifted(dx):
    return T0 + [[dx], [0], [0]]


def test_exact_pose_scores_100(tmp_path):
    root = make_dataset(tmp_path, {0: [(1, np.eye(3), T0, 0.9)]}, [(0, 1, 1)])
    out = score(root, [est(0, 1, np.eye(3), T0)])
    assert out["AR_MSSD"] == out["AR_MSPD"] == out["ADDS"] == 100.0
    assert out["n_targets"] == 1


def test_symmetric_equivalent_pose(tmp_path):
    root = make_dataset(tmp_path, {0: [(1, np.eye(3), T0, 0.9), (2, np.eye(3), T0 + [[300], [0], [0]], 0.9)]},
                        [(0, 1, 1), (0, 2, 1)])
    out = score(root, [est(0, 1, RZ90, T0), est(0, 2, RZ90, T0 + [[300], [0], [0]])])
    # obj 2 declares Rz(90): errors 0. obj 1 does not: each corner moves to a neighbour corner 100 mm away,
    # so MSSD = ADD = 100 / (100 sqrt 3) = 0.577 > every threshold; MSPD of a 90-degree turn is >> 50 px.
    assert out["AR_MSSD"] == out["AR_MSPD"] == out["ADDS"] == 50.0


def test_continuous_symmetry_is_discretised():
    info = {"symmetries_continuous": [{"axis": [0, 0, 1], "offset": [0, 0, 0]}]}
    syms = metric.symmetry_transforms(info)
    assert len(syms) == int(np.ceil(np.pi / 0.01)) == 315
    pts = _prism(40.0, 80.0).vertices
    a = 0.3
    R = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    step = 2 * np.pi / 315
    delta = abs(a - round(a / step) * step)  # distance to the nearest discretised rotation
    expected = 2 * 40.0 * np.sin(delta / 2)  # every vertex lies at radius 40
    got = metric.mssd(R, T0, np.eye(3), T0, pts, syms)
    assert got == pytest.approx(expected, rel=1e-9)
    assert metric.mssd(R, T0, np.eye(3), T0, pts, [(np.eye(3), np.zeros((3, 1)))]) == pytest.approx(
        2 * 40.0 * np.sin(a / 2))


@pytest.mark.parametrize("factor,mssd_hits", [(1 - 1e-6, 7), (1 + 1e-6, 6)])
def test_mssd_just_under_and_over_threshold(tmp_path, factor, mssd_hits):
    root = make_dataset(tmp_path, {0: [(1, np.eye(3), T0, 0.9)]}, [(0, 1, 1)])
    d = 0.2 * CUBE_DIAM * factor  # a translation moves every point by d: MSSD = d / diameter ~ 0.2
    out = score(root, [est(0, 1, np.eye(3), shifted(d))])
    assert out["AR_MSSD"] == pytest.approx(10.0 * mssd_hits)  # thresholds 0.2 (or 0.25) .. 0.5 pass
    assert out["ADDS"] == 0.0  # ADD = d / diameter = 0.2 >= 0.1


def test_strict_comparison_at_the_threshold():
    ests = [{"score": 1.0, "errors": {"m": {0: [0.25]}}}]
    assert metric.match(ests, [0.25], [True], "m") == set()
    assert metric.match(ests, [0.25 + 1e-12], [True], "m") == {0}


@pytest.mark.parametrize("width", [320, 640])
def test_mspd_image_width_normalisation(tmp_path, width):
    root = make_dataset(tmp_path, {0: [(1, np.eye(3), T0, 0.9)]}, [(0, 1, 1)], width=width)
    d = 12.0 * 950 / F  # the nearest points (z = 950) shift most: f d / 950 = 12 px
    out = score(root, [est(0, 1, np.eye(3), shifted(d))])
    err = 12.0 * 640 / width  # 24 px at width 320, 12 px at 640
    hits = sum(err < th for th in range(5, 51, 5))
    assert out["AR_MSPD"] == pytest.approx(10.0 * hits)
    assert hits == (6 if width == 320 else 8)


def test_invisible_and_less_visible_instances(tmp_path):
    far = T0 + [[400], [0], [0]]
    # two instances of obj 1: inst_count 1 keeps only the more visible (far, 0.8); obj 2 (visib 0.05) is
    # not a target at all
    images = {0: [(1, np.eye(3), T0, 0.3), (1, np.eye(3), far, 0.8), (2, np.eye(3), T0 + [[-400], [0], [0]], 0.05)]}
    root = make_dataset(tmp_path, images, [(0, 1, 1)])
    assert score(root, [est(0, 1, np.eye(3), T0)])["AR_MSSD"] == 0.0  # exact on the invalid instance
    out = score(root, [est(0, 1, np.eye(3), far), est(0, 2, np.eye(3), T0 + [[-400], [0], [0]])])
    assert out["AR_MSSD"] == 100.0 and out["n_targets"] == 1 and out["n_evaluated"] == 1


def test_several_instances_top_estimates_and_greedy_matching(tmp_path):
    b = T0 + [[400], [0], [0]]
    images = {0: [(1, np.eye(3), T0, 0.9), (1, np.eye(3), b, 0.8)]}
    root = make_dataset(tmp_path, images, [(0, 1, 2)])
    assert score(root, [est(0, 1, np.eye(3), T0, 0.9), est(0, 1, np.eye(3), b, 0.8)])["AR_MSSD"] == 100.0
    # both estimates on A: the second cannot take A again and is too far from B
    assert score(root, [est(0, 1, np.eye(3), T0, 0.9), est(0, 1, np.eye(3), T0, 0.8)])["AR_MSSD"] == 50.0
    # only the inst_count = 2 best-scored estimates count: a correct third one is ignored
    out = score(root, [est(0, 1, np.eye(3), T0, 0.9), est(0, 1, np.eye(3), T0, 0.8), est(0, 1, np.eye(3), b, 0.1)])
    assert out["AR_MSSD"] == 50.0 and out["n_evaluated"] == 2
    # greedy by score: each estimate takes the unmatched valid GT with the lowest error under the threshold
    root2 = make_dataset(tmp_path / "g", {0: [(1, np.eye(3), T0, 0.9), (1, np.eye(3), shifted(120), 0.8)]},
                         [(0, 1, 2)])
    # e1 (x = 70): 70 mm to A (0.404 diam), 50 mm to B (0.289); e2 (x = 125): 5 mm to B (0.029), 125 to A (0.72).
    # th <= 0.25: e1 matches nothing, e2 takes B. th >= 0.3: e1 takes B (lowest error), e2 is left with A,
    # 0.72 > th. One match of two at every threshold (an optimal assignment would get both at 0.45 and 0.5).
    out = score(root2, [est(0, 1, np.eye(3), shifted(70), 0.9), est(0, 1, np.eye(3), shifted(125), 0.8)])
    assert out["AR_MSSD"] == pytest.approx(50.0)


def test_missing_and_extra_estimates(tmp_path):
    images = {0: [(1, np.eye(3), T0, 0.9)], 1: [(1, np.eye(3), T0, 0.9)], 2: [(1, np.eye(3), T0, 0.9)]}
    root = make_dataset(tmp_path, images, [(0, 1, 1), (1, 1, 1)])  # image 2 is not a target
    good = est(0, 1, np.eye(3), T0, 0.5)
    assert score(root, [good])["AR_MSSD"] == 50.0  # the target of image 1 has no estimate
    # extras that do not count: a lower-scored one, one for a non-target image, one for an absent object
    extra = [est(0, 1, np.eye(3), shifted(500), 0.1), est(2, 1, np.eye(3), T0), est(0, 3, np.eye(3), T0)]
    out = score(root, [good] + extra)
    assert out["AR_MSSD"] == 50.0 and out["n_evaluated"] == 1 and out["n_estimates"] == 4
    # a wrong estimate scored higher takes the single slot
    assert score(root, [good, est(0, 1, np.eye(3), shifted(500), 0.9)])["AR_MSSD"] == 0.0


def _slab_depth(z_front):
    return np.full((H, W), z_front)


@pytest.mark.parametrize("dz_over_diam", [0.0, 0.2 / 1.03])
def test_vsd_on_rendered_depth(tmp_path, dz_over_diam):
    # a slab filling the image, front face at z = 995 mm; the estimate is pushed back by dz along z.
    # Both renders cover every pixel, so VSD's union is the image, and the pixel distance difference is
    # dz * |ray| with |ray| = sqrt(1 + xn^2 + yn^2): error(tau) = fraction of pixels with dz |ray| / diam >= tau
    root = make_dataset(tmp_path, {0: [(4, np.eye(3), T0, 1.0)]}, [(0, 4, 1)], depth={0: _slab_depth(995.0)})
    dz = dz_over_diam * SLAB_DIAM
    out = score(root, [est(0, 4, np.eye(3), T0 + [[0], [0], [dz]])], with_vsd=True)
    u, v = np.meshgrid(np.arange(W), np.arange(H))
    ray = np.sqrt(1 + ((u - K[0, 2]) / F) ** 2 + ((v - K[1, 2]) / F) ** 2)
    taus = np.arange(0.05, 0.51, 0.05)
    errors = [np.mean(dz * ray / SLAB_DIAM >= tau) for tau in taus]
    expected = np.mean([[e < th for th in np.arange(0.05, 0.51, 0.05)] for e in errors]) * 100
    assert out["AR_VSD"] == pytest.approx(expected, abs=1e-9)
    if dz_over_diam == 0:
        assert out["AR_VSD"] == 100.0 and out["AR"] == 100.0
    else:
        assert 0 < out["AR_VSD"] < 100
        mssd_hits = sum(dz_over_diam < th for th in np.arange(0.05, 0.51, 0.05))
        assert out["AR_MSSD"] == pytest.approx(10.0 * mssd_hits)


def test_vsd_when_sphere_projections_do_not_overlap():
    assert not metric.sphere_projections_overlap(50.0, [0, 0, 1000], [200, 0, 1000])  # 0.2 >= 0.1
    assert metric.sphere_projections_overlap(50.0, [0, 0, 1000], [90, 0, 1000])


def test_cli_reads_the_bop19_csv(tmp_path, capsys):
    from declip.cli import main

    root = make_dataset(tmp_path / "ds", {0: [(1, np.eye(3), T0, 0.9)]}, [(0, 1, 1)],
                        depth={0: np.zeros((H, W))})
    csv = tmp_path / "res.csv"
    bop.write_results(csv, [est(0, 1, np.eye(3), T0)])
    assert main(["score", "bop", "--dataset", str(root), "--pred", str(csv)]) == 0
    out = json.loads(capsys.readouterr().out)
    # the test depth is empty (no sensor data): bop19 visibility counts the model as visible => VSD 0
    assert out["AR"] == out["AR_VSD"] == 100.0
    assert set(out) >= {"AR", "AR_VSD", "AR_MSSD", "AR_MSPD", "ADDS"}
