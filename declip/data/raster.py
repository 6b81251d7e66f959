"""A small numpy triangle rasteriser: depth (and the visible triangle) of a mesh under a pinhole camera.

VSD (BOP) compares depth renderings of the object model; the BOP toolkit renders them with OpenGL
(bop_toolkit_lib/renderer_vispy.py). This rasteriser needs no GL context, so scoring runs on any node.
Conventions match the toolkit's renderers: the model is placed by (R, t) in the camera frame (x right,
y down, z forward), pixel (u, v) samples the ray through the image point (u, v) with K's principal point
in pixel-index coordinates (OpenCV), depth is the camera z of the nearest surface, 0 where none.
Depth is interpolated perspective-correctly (1/z is affine in the image plane).
"""

from __future__ import annotations

import numpy as np

NEAR = 1e-6  # triangles with a vertex at or behind this camera depth are skipped (BOP objects lie in front)
CHUNK = 2_000_000  # (triangle, pixel) candidates per vectorised step, bounds the memory


def project(points: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Image coordinates (N, 2) and camera depth (N,) of camera-frame points."""
    z = points[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = np.stack([K[0, 0] * points[:, 0] / z + K[0, 2], K[1, 1] * points[:, 1] / z + K[1, 2]], 1)
    return uv, z


def rasterize(vertices: np.ndarray, faces: np.ndarray, K: np.ndarray, width: int, height: int,
              R: np.ndarray | None = None, t: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Z-buffer rasterisation of triangles `faces` (F, 3) over `vertices` (N, 3) (model frame, placed by
    R, t; t in the vertices' unit). Returns depth (H, W) float64 (0 = background) and the index of the
    visible face (H, W) int64 (-1 = background). A pixel is covered when its centre lies inside or on
    the triangle's edges."""
    v = np.asarray(vertices, dtype=np.float64)
    if R is not None:
        v = v @ np.asarray(R, dtype=np.float64).T
    if t is not None:
        v = v + np.asarray(t, dtype=np.float64).reshape(1, 3)
    faces = np.asarray(faces, dtype=np.int64)
    uv, z = project(v, K)
    depth = np.full(height * width, np.inf)
    owner = np.full(height * width, -1, dtype=np.int64)
    fz = z[faces]  # (F, 3)
    keep = np.all(fz > NEAR, axis=1)
    tri = uv[faces]  # (F, 3, 2)
    # signed doubled area; degenerate (zero-area) triangles cover no pixel centre consistently: drop them
    area = ((tri[:, 1, 0] - tri[:, 0, 0]) * (tri[:, 2, 1] - tri[:, 0, 1])
            - (tri[:, 2, 0] - tri[:, 0, 0]) * (tri[:, 1, 1] - tri[:, 0, 1]))
    keep &= np.abs(area) > 1e-12
    lo = np.ceil(tri.min(axis=1)).astype(np.int64)  # first pixel centre inside the box
    hi = np.floor(tri.max(axis=1)).astype(np.int64)
    lo = np.maximum(lo, 0)
    hi[:, 0] = np.minimum(hi[:, 0], width - 1)
    hi[:, 1] = np.minimum(hi[:, 1], height - 1)
    keep &= np.all(hi >= lo, axis=1)
    ids = np.nonzero(keep)[0]
    nx, ny = hi[ids, 0] - lo[ids, 0] + 1, hi[ids, 1] - lo[ids, 1] + 1
    counts = nx * ny
    start = 0
    while start < len(ids):
        stop = start + max(1, int(np.searchsorted(np.cumsum(counts[start:]), CHUNK)))
        _fill(ids[start:stop], nx[start:stop], ny[start:stop], lo[ids[start:stop]], tri, fz, area,
              depth, owner, width)
        start = stop
    depth[~np.isfinite(depth)] = 0.0
    return depth.reshape(height, width), owner.reshape(height, width)


def _fill(ids, nx, ny, lo, tri, fz, area, depth, owner, width) -> None:
    counts = nx * ny
    f = np.repeat(ids, counts)
    # local pixel index inside each triangle's box
    offset = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    rep_nx = np.repeat(nx, counts)
    px = np.repeat(lo[:, 0], counts) + offset % rep_nx
    py = np.repeat(lo[:, 1], counts) + offset // rep_nx
    a, b, c = tri[f, 0], tri[f, 1], tri[f, 2]
    # barycentric weights of the pixel centre from the edge functions, normalised by the signed area
    w0 = ((b[:, 0] - px) * (c[:, 1] - py) - (c[:, 0] - px) * (b[:, 1] - py)) / area[f]
    w1 = ((c[:, 0] - px) * (a[:, 1] - py) - (a[:, 0] - px) * (c[:, 1] - py)) / area[f]
    w2 = 1.0 - w0 - w1
    eps = -1e-9
    inside = (w0 >= eps) & (w1 >= eps) & (w2 >= eps)
    f, px, py, w0, w1, w2 = f[inside], px[inside], py[inside], w0[inside], w1[inside], w2[inside]
    zz = 1.0 / (w0 / fz[f, 0] + w1 / fz[f, 1] + w2 / fz[f, 2])
    pix = py * width + px
    order = np.lexsort((zz, pix))  # by pixel, nearest first
    pix, zz, f = pix[order], zz[order], f[order]
    first = np.ones(len(pix), dtype=bool)
    first[1:] = pix[1:] != pix[:-1]
    pix, zz, f = pix[first], zz[first], f[first]
    closer = zz < depth[pix]
    depth[pix[closer]] = zz[closer]
    owner[pix[closer]] = f[closer]


def render_depth(vertices, faces, K, width: int, height: int, R=None, t=None) -> np.ndarray:
    """Depth image only (the BOP renderers' render_object(...)["depth"])."""
    return rasterize(vertices, faces, K, width, height, R, t)[0]
