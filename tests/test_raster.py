"""The numpy triangle rasteriser against analytic depth and coverage of simple shapes."""

import numpy as np
import pytest

from declip.data import ply
from declip.data.raster import rasterize, render_depth

K = np.array([[100.0, 0, 31.5], [0, 100.0, 23.5], [0, 0, 1]])
W, H = 64, 48


def _rays():
    u, v = np.meshgrid(np.arange(W), np.arange(H))
    return np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u, float)], -1)


def test_tilted_plane_depth_is_exact():
    # a big quad on the plane n.X = h, tilted; ray d hits it at z = h / (n.d) (d has z = 1)
    n = np.array([0.2, -0.3, 1.0])
    h = 2.0
    corners2d = np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    z = (h - corners2d @ n[:2]) / n[2]
    quad = np.column_stack([corners2d, z])
    depth = render_depth(quad, [[0, 1, 2], [0, 2, 3]], K, W, H)
    rays = _rays()
    expected = h / (rays @ n)
    # the quad spans x, y in [-1, 1] at depth ~2 => covers the whole 64x48 image (|x/z| <= 0.32)
    assert np.all(depth > 0)
    np.testing.assert_allclose(depth, expected, rtol=1e-10)


def test_square_coverage_follows_pixel_centres():
    # a fronto-parallel square at z = 4 whose image edges fall on half-pixel positions 10.5 .. 30.5 and 5.5 .. 20.5
    z = 4.0
    x0, x1 = (10.5 - K[0, 2]) * z / K[0, 0], (30.5 - K[0, 2]) * z / K[0, 0]
    y0, y1 = (5.5 - K[1, 2]) * z / K[1, 1], (20.5 - K[1, 2]) * z / K[1, 1]
    sq = np.array([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]])
    depth, face = rasterize(sq, [[0, 1, 2], [0, 3, 2]], K, W, H)
    expected = np.zeros((H, W), bool)
    expected[6:21, 11:31] = True  # pixel centres strictly inside
    np.testing.assert_array_equal(depth > 0, expected)
    np.testing.assert_allclose(depth[expected], z)
    assert set(np.unique(face[expected])) == {0, 1} and np.all(face[~expected] == -1)


def test_nearer_surface_wins_and_pose_is_applied():
    sq = np.array([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], float)
    faces = [[0, 1, 2], [0, 2, 3]]
    verts = np.concatenate([sq * [0.3, 0.3, 1], sq * [2, 2, 1] + [0, 0, 1.0]])  # small square 1 m in front of big
    faces2 = faces + [[4, 5, 6], [4, 6, 7]]
    depth = render_depth(verts, faces2, K, W, H, R=np.eye(3), t=[0, 0, 3.0])
    assert depth[int(K[1, 2]), int(K[0, 2])] == pytest.approx(3.0)  # centre: the small square at z = 3
    assert depth[2, 2] == pytest.approx(4.0)  # corner: only the big one at z = 4


def _uv_sphere(radius, n_lat=48, n_lon=96):
    th = np.linspace(0, np.pi, n_lat + 1)
    ph = np.linspace(0, 2 * np.pi, n_lon, endpoint=False)
    T, P = np.meshgrid(th, ph, indexing="ij")
    v = radius * np.stack([np.sin(T) * np.cos(P), np.sin(T) * np.sin(P), np.cos(T)], -1).reshape(-1, 3)
    idx = np.arange((n_lat + 1) * n_lon).reshape(n_lat + 1, n_lon)
    f = []
    for i in range(n_lat):
        for j in range(n_lon):
            a, b, c, d = idx[i, j], idx[i, (j + 1) % n_lon], idx[i + 1, j], idx[i + 1, (j + 1) % n_lon]
            f += [[a, b, d], [a, d, c]]
    return v, np.array(f)


def test_sphere_depth_matches_ray_intersection():
    r, c = 0.5, np.array([0.1, -0.05, 3.0])
    v, f = _uv_sphere(r)
    depth = render_depth(v, f, K, W, H, t=c)
    d = _rays()
    # |s d - c| = r  =>  s = (d.c - sqrt((d.c)^2 - |d|^2 (|c|^2 - r^2))) / |d|^2 ; depth = s (d_z = 1)
    dc, dd = d @ c, (d * d).sum(-1)
    disc = dc ** 2 - dd * (c @ c - r * r)
    hit = disc > 0
    expected = np.where(hit, (dc - np.sqrt(np.clip(disc, 0, None))) / dd, 0.0)
    inner = disc > 0.05 * dd * r * r  # away from the silhouette, where tessellation decides coverage
    assert np.all(depth[inner] > 0)
    # the mesh lies within the sagitta r (1 - cos(pi / 48)) of the sphere along its normal; along a ray that
    # meets the sphere at incidence angle i the gap is at most sagitta / cos(i), cos(i) = sqrt(disc) / (|d| r)
    sagitta = r * (1 - np.cos(np.pi / 48))
    cos_i = np.sqrt(np.clip(disc, 1e-12, None)) / (np.sqrt(dd) * r)
    assert np.all(np.abs(depth - expected)[inner] <= sagitta / cos_i[inner])
    covered = depth > 0
    assert np.all(hit[covered]) and np.all(depth[covered] >= expected[covered] - 1e-9)  # inscribed: never in front
    assert abs((depth > 0).sum() - hit.sum()) <= 0.03 * hit.sum()


def test_ply_roundtrip_and_ascii(tmp_path):
    mesh = ply.Mesh(np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], float), np.array([[0, 1, 2]]),
                    np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8))
    ply.write_ply(tmp_path / "a.ply", mesh)
    back = ply.read_ply(tmp_path / "a.ply")
    np.testing.assert_allclose(back.vertices, mesh.vertices)
    np.testing.assert_array_equal(back.faces, mesh.faces)
    np.testing.assert_array_equal(back.colors, mesh.colors)
    (tmp_path / "b.ply").write_text(
        "ply\nformat ascii 1.0\ncomment hand-made quad\nelement vertex 4\nproperty float x\nproperty float y\n"
        "property float z\nelement face 1\nproperty list uchar int vertex_indices\nend_header\n"
        "0 0 0\n1 0 0\n1 1 0\n0 1 0\n4 0 1 2 3\n")
    quad = ply.read_ply(tmp_path / "b.ply")
    assert quad.vertices.shape == (4, 3) and quad.colors is None
    np.testing.assert_array_equal(quad.faces, [[0, 1, 2], [0, 2, 3]])


def test_binary_ply_with_a_quad_takes_the_general_path(tmp_path):
    head = ("ply\nformat binary_little_endian 1.0\nelement vertex 4\nproperty float x\nproperty float y\n"
            "property float z\nelement face 1\nproperty list uchar int vertex_indices\nend_header\n").encode()
    verts = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], "<f4").tobytes()
    face = np.array([4], "u1").tobytes() + np.array([0, 1, 2, 3], "<i4").tobytes()
    (tmp_path / "q.ply").write_bytes(head + verts + face)
    quad = ply.read_ply(tmp_path / "q.ply")
    np.testing.assert_array_equal(quad.faces, [[0, 1, 2], [0, 2, 3]])
    np.testing.assert_allclose(quad.vertices[2], [1, 1, 0])
