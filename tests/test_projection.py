"""Projection, depth test and 2D masks against scenes with known answers."""

import numpy as np

from declip.data import render3d
from declip.evaluate import projection as P

K = render3d.intrinsics(64, 48, 60.0)


def test_look_at_and_projection_hit_the_principal_point():
    pose = render3d.look_at((0, 0, 1), (3, 0, 1))  # looking along +x
    u, v, z = P.project(np.array([[3.0, 0, 1], [3.0, -0.5, 1], [3.0, 0, 1.5]]), pose, K)
    assert (u[0], v[0], z[0]) == (round(K[0, 2]), round(K[1, 2]), 3.0)
    f = K[0, 0]
    assert u[1] == np.rint(K[0, 2] + f * 0.5 / 3)  # world -y is camera right
    assert v[2] == np.rint(K[1, 2] - f * 0.5 / 3)  # world up is image up


def _occlusion_scene():
    rng = np.random.default_rng(0)
    front = render3d.transform(render3d.box(1.0, 1.0, 1.0, 0.03, rng), 0.0, (2.0, 0, 0.5))  # big box, centre x=2
    back = render3d.transform(render3d.box(0.3, 0.3, 0.3, 0.03, rng), 0.0, (4.0, 0, 0.85))  # small box behind it
    surf = render3d.concat([front, back])
    owner = np.r_[np.zeros(len(front), int), np.ones(len(back), int)]
    pose = render3d.look_at((0, 0, 1.0), (4, 0, 1.0))
    frame = render3d.render(surf, np.full((len(surf), 3), 200.0), pose, K, 64, 48)
    return surf, owner, pose, frame


def test_render_zbuffer_keeps_the_nearest_surface():
    surf, owner, pose, frame = _occlusion_scene()
    hit = frame.index >= 0
    assert (owner[frame.index[hit]] == 0).all()  # the small box is hidden everywhere
    # the centre pixel sees the big box's face at x = 1.5, i.e. depth 1.5 m
    assert abs(frame.depth[int(K[1, 2]), int(K[0, 2])] - 1.5) < 0.03


def test_depth_test_occluded_object_has_no_visible_points():
    surf, owner, pose, frame = _occlusion_scene()
    vis, u, v = P.visible_points(surf.points, pose, K, frame.depth, tolerance=0.2)
    assert vis[owner == 1].sum() == 0
    assert vis[owner == 0].sum() > 50
    # visible = within the tolerance of the front face (x = 1.5 m): the box's far half fails the test
    assert (surf.points[vis, 0] < 1.5 + 0.2 + 1e-6).all()
    assert vis[(owner == 0) & (surf.points[:, 0] > 2.4)].sum() == 0
    # without the depth test the hidden box would project inside the image
    pu, pv, pz = P.project(surf.points[owner == 1], pose, K)
    assert ((pu >= 0) & (pu < 64) & (pv >= 0) & (pv < 48) & (pz > 0)).all()


def test_points_outside_or_behind_or_on_invalid_depth_are_not_visible():
    pose = render3d.look_at((0, 0, 0), (1, 0, 0))
    depth = np.full((48, 64), 2.0)
    depth[:, :10] = 0.0  # invalid sensor depth
    pts = np.array([[2.0, 0, 0], [-2.0, 0, 0], [2.0, 5.0, 0], [2.0, 0.0, 0.3], [2.0, 1.0, 0]])
    vis, u, v = P.visible_points(pts, pose, K, depth, 0.05)
    # ahead: yes; behind: no; far outside: no; ahead at depth 2 (z = 2): yes; projects on invalid depth: no
    assert u[4] < 10
    assert vis.tolist() == [True, False, False, True, False]


def test_view_ranking_masks_and_multilevel_boxes():
    vis = np.array([[1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]], bool)
    masks = np.array([[1, 1, 1, 0], [0, 0, 0, 1]], bool)
    counts = P.view_counts(vis, masks)
    assert counts.tolist() == [[2, 0], [3, 0], [0, 0]]
    views = P.top_views(counts, 2)
    assert views[0].tolist() == [1, 0] and views[1].tolist() == []
    m = P.points_mask(np.array([10, 20]), np.array([5, 9]), (30, 40), radius=1)
    assert m.sum() == 18 and m[4, 9] and m[10, 21] and not m[7, 15]
    assert P.mask_box(m) == (9, 4, 22, 11)
    boxes = P.multilevel_boxes(m, 3, 0.1)
    # width 13, height 7: grows by int(1.3)=1 and int(0.7)=0 per level (OpenMask3D mask2box_multi_level)
    assert boxes == [(9, 4, 22, 11), (8, 4, 23, 11), (7, 4, 24, 11)]


def test_truncated_projection_is_openmask3d_int_assignment():
    """OpenMask3D stores x/z, y/z in an int array (features_extractor.py get_visible_points_view): numpy
    truncates toward zero, so -0.7 -> 0 (inside) and 3.9 -> 3."""
    rng = np.random.default_rng(0)
    pts = np.column_stack([rng.uniform(-1, 1, 50), rng.uniform(-1, 1, 50), rng.uniform(0.5, 3, 50)])
    K = np.array([[30.0, 0, 15.3], [0, 30.0, 10.7], [0, 0, 1]])
    pose = np.eye(4)
    u, v, _ = P.project(pts, pose, K, rounding="truncate")
    proj = (K @ pts.T).T  # camera = world for the identity pose (x right, y down, z forward)
    want = np.zeros((50, 2), dtype=int)
    want[:] = np.column_stack([proj[:, 0] / proj[:, 2], proj[:, 1] / proj[:, 2]])
    np.testing.assert_array_equal(np.column_stack([u, v]).astype(int), want)


def test_views_ranked_by_distinct_pixels_as_openmask3d():
    """get_top_k_indices_per_mask sums a per-view boolean image of the mask's projected visible points:
    points sharing a pixel count once."""
    rng = np.random.default_rng(1)
    n_views, n_pts, h, w = 4, 60, 6, 7
    vis = rng.random((n_views, n_pts)) > 0.3
    us, vs = rng.integers(0, w, (n_views, n_pts)), rng.integers(0, h, (n_views, n_pts))
    us[2, :40], vs[2, :40] = 3, 3  # view 2: many points on one pixel -> few distinct pixels
    masks = rng.random((3, n_pts)) > 0.5
    want = np.zeros((n_views, 3), dtype=int)
    for i in range(n_views):
        for j in range(3):
            image = np.zeros((h, w), bool)
            sel = masks[j] & vis[i]
            image[vs[i, sel], us[i, sel]] = True
            want[i, j] = image.sum()
    np.testing.assert_array_equal(P.view_pixel_counts(vis, us, vs, masks, w), want)
    assert (P.view_counts(vis, masks)[2] > want[2]).all()  # the point count ranks view 2 differently
