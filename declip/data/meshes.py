"""Triangle meshes of the mini world's primitives (sizes from `render3d.PRIMITIVE_SIZES`), centred at their
bounding-box centre as BOP models are, with a height-banded texture and the symmetries it leaves.

The texture is a function of height only (alternating bright/dark bands), so a primitive keeps the
rotational symmetries of its shape about its vertical axis: continuous for cylinders, cones and spheres,
quarter turns for square boxes, half turns for oblong boxes. These are what `models_info.json` declares
(BOP declares the symmetries of shape and texture together).
"""

from __future__ import annotations

import numpy as np

from declip.data import render3d

BANDS = 4  # texture bands over the object's height
DARK = 0.55  # colour factor of the dark bands


def _grid_faces(rows: int, cols: int, offset: int = 0, wrap: bool = False) -> list:
    """Two triangles per cell of a (rows+1) x cols vertex grid (cols wraps around when `wrap`)."""
    faces = []
    ncol = cols if wrap else cols - 1
    for i in range(rows):
        for j in range(ncol):
            a = offset + i * cols + j
            b = offset + i * cols + (j + 1) % cols
            c, d = a + cols, b + cols
            faces += [[a, b, d], [a, d, c]]
    return faces


def _box(dx, dy, dz, seg: int) -> tuple[np.ndarray, np.ndarray]:
    verts, faces = [], []
    hx, hy, hz = dx / 2, dy / 2, dz / 2
    # each face a seg x seg grid so the height bands have edges to follow
    planes = [((-hx, -hy, -hz), (dx, 0, 0), (0, 0, dz)), ((hx, -hy, -hz), (0, dy, 0), (0, 0, dz)),
              ((hx, hy, -hz), (-dx, 0, 0), (0, 0, dz)), ((-hx, hy, -hz), (0, -dy, 0), (0, 0, dz)),
              ((-hx, -hy, hz), (dx, 0, 0), (0, dy, 0)), ((-hx, hy, -hz), (dx, 0, 0), (0, -dy, 0))]
    for o, eu, ev in planes:
        o, eu, ev = (np.asarray(x, float) for x in (o, eu, ev))
        s = np.linspace(0, 1, seg + 1)
        grid = o + s[None, :, None] * eu + s[:, None, None] * ev  # (rows, cols, 3)
        faces += _grid_faces(seg, seg + 1, sum(len(v) for v in verts))
        verts.append(grid.reshape(-1, 3))
    return np.concatenate(verts), np.asarray(faces)


def _revolution(profile: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Surface of revolution about z of a (rows, 2) profile of (radius, z), n segments around."""
    a = 2 * np.pi * np.arange(n) / n
    verts = np.stack([profile[:, 0:1] * np.cos(a), profile[:, 0:1] * np.sin(a),
                      np.broadcast_to(profile[:, 1:2], (len(profile), n))], -1).reshape(-1, 3)
    return verts, np.asarray(_grid_faces(len(profile) - 1, n, wrap=True))


def primitive_mesh(name: str, scale: float, segments: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """(vertices (N, 3) metres, faces (F, 3)) of a primitive, centred at its bounding-box centre."""
    dims = [d * scale for d in render3d.PRIMITIVE_SIZES[name]]
    rows = 2 * BANDS
    if name in ("box", "flat_box", "tall_box"):
        return _box(*dims, rows)
    if name in ("cylinder", "tall_cylinder"):
        r, h = dims
        z = np.linspace(-h / 2, h / 2, rows + 1)
        side = np.concatenate([[[0.0, -h / 2]], np.column_stack([np.full(rows + 1, r), z]), [[0.0, h / 2]]])
        return _revolution(side, segments)
    if name == "sphere":
        (r,) = dims
        th = np.linspace(np.pi, 0, rows * 2 + 1)
        return _revolution(np.column_stack([r * np.sin(th), r * np.cos(th)]), segments)
    if name == "cone":
        r, h = dims
        t = np.linspace(0, 1, rows + 1)
        prof = np.concatenate([[[0.0, -h / 2]], np.column_stack([r * (1 - t), -h / 2 + h * t])])
        return _revolution(prof, segments)
    raise KeyError(f"unknown primitive {name!r}; known: {render3d.PRIMITIVES}")


def face_colors(vertices: np.ndarray, faces: np.ndarray, color) -> np.ndarray:
    """(F, 3) float colours: the category colour, darkened on every other height band."""
    z = vertices[faces].mean(axis=1)[:, 2]
    lo, hi = vertices[:, 2].min(), vertices[:, 2].max()
    band = np.clip(((z - lo) / max(hi - lo, 1e-9) * BANDS).astype(int), 0, BANDS - 1)
    factor = np.where(band % 2 == 0, 1.0, DARK)
    return np.asarray(color, float)[None] * factor[:, None]


def symmetries(name: str) -> dict:
    """models_info.json symmetry entries of a primitive (model frame, z up, mm)."""
    if name in ("cylinder", "tall_cylinder", "cone", "sphere"):
        return {"symmetries_continuous": [{"axis": [0, 0, 1], "offset": [0, 0, 0]}]}
    turns = (1, 2, 3) if name in ("box", "tall_box") else (2,)  # square footprint: quarter turns
    out = []
    for k in turns:
        a = k * np.pi / 2
        m = np.eye(4)
        m[:2, :2] = np.round([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]], 12)
        out.append(m.ravel().tolist())
    return {"symmetries_discrete": out}


def face_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    n = np.cross(vertices[faces[:, 1]] - vertices[faces[:, 0]], vertices[faces[:, 2]] - vertices[faces[:, 0]])
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
