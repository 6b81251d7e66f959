"""Vectorised numpy geometry and rendering for the mini 3D world.

Surfaces are sampled on jittered grids in area-preserving parameterisations, so the points are the
scene's "mesh vertices" (ScanNet annotates and evaluates per vertex) and also dense enough to render:
`render` splats every point as a small square sized by its sampling spacing and keeps, per pixel, the
point of minimum camera depth (a z-buffer). Camera conventions follow ScanNet: poses are
camera-to-world 4x4 matrices, camera axes x right, y down, z forward (OpenCV), depth in metres.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PRIMITIVES = ("box", "flat_box", "tall_box", "cylinder", "tall_cylinder", "sphere", "cone")


@dataclass
class Surface:
    points: np.ndarray  # (N, 3) float64
    normals: np.ndarray  # (N, 3) unit outward normals
    spacing: np.ndarray  # (N,) sampling spacing in metres (sets the splat size)

    def __len__(self) -> int:
        return len(self.points)


def concat(surfaces: list[Surface]) -> Surface:
    return Surface(np.concatenate([s.points for s in surfaces]), np.concatenate([s.normals for s in surfaces]),
                   np.concatenate([s.spacing for s in surfaces]))


def _jittered_grid(len_u: float, len_v: float, spacing: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Stratified samples in [0,1)^2: one uniform point per cell of a grid with ~`spacing` cells."""
    nu, nv = max(1, int(np.ceil(len_u / spacing))), max(1, int(np.ceil(len_v / spacing)))
    i, j = np.meshgrid(np.arange(nu), np.arange(nv), indexing="ij")
    u = (i.ravel() + rng.random(nu * nv)) / nu
    v = (j.ravel() + rng.random(nu * nv)) / nv
    return u, v


def rectangle(origin, edge_u, edge_v, spacing: float, rng: np.random.Generator) -> Surface:
    """Points on the parallelogram origin + a*edge_u + b*edge_v; normal = edge_u x edge_v."""
    origin, edge_u, edge_v = (np.asarray(x, dtype=np.float64) for x in (origin, edge_u, edge_v))
    u, v = _jittered_grid(np.linalg.norm(edge_u), np.linalg.norm(edge_v), spacing, rng)
    pts = origin + u[:, None] * edge_u + v[:, None] * edge_v
    n = np.cross(edge_u, edge_v)
    n = np.broadcast_to(n / np.linalg.norm(n), pts.shape).copy()
    return Surface(pts, n, np.full(len(pts), spacing))


def _disc(radius: float, z: float, spacing: float, rng) -> Surface:
    # rho = R sqrt(u) makes the density uniform in area
    u, v = _jittered_grid(radius, np.pi * radius, spacing, rng)
    rho, th = radius * np.sqrt(u), 2 * np.pi * v
    pts = np.stack([rho * np.cos(th), rho * np.sin(th), np.full_like(rho, z)], 1)
    return Surface(pts, np.tile([0.0, 0.0, 1.0], (len(pts), 1)), np.full(len(pts), spacing))


def box(dx: float, dy: float, dz: float, spacing: float, rng) -> Surface:
    """Axis-aligned box on z=0, centred in x and y; the bottom face (resting on the floor) is not a surface."""
    hx, hy = dx / 2, dy / 2
    faces = [
        rectangle((-hx, -hy, dz), (dx, 0, 0), (0, dy, 0), spacing, rng),  # top, normal +z
        rectangle((hx, -hy, 0), (0, dy, 0), (0, 0, dz), spacing, rng),  # +x
        rectangle((-hx, hy, 0), (0, -dy, 0), (0, 0, dz), spacing, rng),  # -x
        rectangle((hx, hy, 0), (-dx, 0, 0), (0, 0, dz), spacing, rng),  # +y
        rectangle((-hx, -hy, 0), (dx, 0, 0), (0, 0, dz), spacing, rng),  # -y
    ]
    return concat(faces)


def cylinder(radius: float, height: float, spacing: float, rng) -> Surface:
    """Side and top cap of an upright cylinder standing on z=0."""
    u, v = _jittered_grid(2 * np.pi * radius, height, spacing, rng)
    th = 2 * np.pi * u
    n = np.stack([np.cos(th), np.sin(th), np.zeros_like(th)], 1)
    side = Surface(np.stack([radius * n[:, 0], radius * n[:, 1], height * v], 1), n, np.full(len(th), spacing))
    return concat([side, _disc(radius, height, spacing, rng)])


def sphere(radius: float, spacing: float, rng) -> Surface:
    """Sphere resting on z=0; z uniform in [-1, 1] with uniform azimuth is uniform in area (Archimedes)."""
    u, v = _jittered_grid(2 * radius, 2 * np.pi * radius, spacing, rng)
    z, th = 2 * u - 1, 2 * np.pi * v
    s = np.sqrt(np.clip(1 - z * z, 0, None))
    n = np.stack([s * np.cos(th), s * np.sin(th), z], 1)
    return Surface(radius * n + np.array([0.0, 0.0, radius]), n, np.full(len(z), spacing))


def cone(radius: float, height: float, spacing: float, rng) -> Surface:
    """Lateral surface of an upright cone (apex up) on z=0; distance from apex L sqrt(u) is area-uniform."""
    slant = float(np.hypot(radius, height))
    u, v = _jittered_grid(slant, np.pi * radius, spacing, rng)
    t, th = np.sqrt(u), 2 * np.pi * v  # t = fraction of the slant from the apex
    pts = np.stack([radius * t * np.cos(th), radius * t * np.sin(th), height * (1 - t)], 1)
    n = np.stack([height * np.cos(th), height * np.sin(th), np.full_like(th, radius)], 1) / slant
    return Surface(pts, n, np.full(len(t), spacing))


# Base sizes in metres (ScanNet-like object scale); the generator scales them per instance.
PRIMITIVE_SIZES = {
    "box": (0.42, 0.42, 0.45),
    "flat_box": (0.7, 0.5, 0.22),
    "tall_box": (0.3, 0.3, 0.8),
    "cylinder": (0.2, 0.3),
    "tall_cylinder": (0.09, 0.5),
    "sphere": (0.17,),
    "cone": (0.22, 0.5),
}


def primitive(name: str, scale: float, spacing: float, rng) -> Surface:
    """Surface of a primitive of `PRIMITIVE_SIZES[name]` times `scale`, local frame (standing on z=0)."""
    dims = [d * scale for d in PRIMITIVE_SIZES[name]]
    if name in ("box", "flat_box", "tall_box"):
        return box(*dims, spacing, rng)
    if name in ("cylinder", "tall_cylinder"):
        return cylinder(*dims, spacing, rng)
    if name == "sphere":
        return sphere(*dims, spacing, rng)
    if name == "cone":
        return cone(*dims, spacing, rng)
    raise KeyError(f"unknown primitive {name!r}; known: {PRIMITIVES}")


def footprint_radius(name: str, scale: float) -> float:
    """Radius of the circle around the primitive's footprint (used to place objects without overlap)."""
    d = PRIMITIVE_SIZES[name]
    return scale * (float(np.hypot(d[0], d[1])) / 2 if len(d) == 3 else d[0])


def transform(surface: Surface, yaw: float, translation) -> Surface:
    c, s = np.cos(yaw), np.sin(yaw)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    return Surface(surface.points @ rot.T + np.asarray(translation, dtype=np.float64), surface.normals @ rot.T,
                   surface.spacing)


def intrinsics(width: int, height: int, fov_deg: float) -> np.ndarray:
    """3x3 pinhole matrix with horizontal field of view `fov_deg`; principal point at the pixel-grid centre
    ((W-1)/2, as ScanNet's 319.5 for 640 px), pixel centres at integer coordinates."""
    f = (width / 2) / np.tan(np.deg2rad(fov_deg) / 2)
    return np.array([[f, 0.0, (width - 1) / 2], [0.0, f, (height - 1) / 2], [0.0, 0.0, 1.0]])


def look_at(eye, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Camera-to-world 4x4 pose of a camera at `eye` looking at `target` (x right, y down, z forward)."""
    eye, target, up = (np.asarray(x, dtype=np.float64) for x in (eye, target, up))
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([x, y, z], 1)
    pose[:3, 3] = eye
    return pose


def world_to_camera(points: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Points (N,3) in camera coordinates for a camera-to-world pose (inverse rigid transform)."""
    return (points - pose[:3, 3]) @ pose[:3, :3]


MAX_SPLAT_RADIUS = 4
NEAR = 0.05


@dataclass
class Frame:
    rgb: np.ndarray  # uint8 (H, W, 3)
    depth: np.ndarray  # float32 (H, W) metres, 0 = no surface
    index: np.ndarray  # int64 (H, W) index of the nearest point, -1 = none


def render(surface: Surface, colors: np.ndarray, pose: np.ndarray, K: np.ndarray, width: int, height: int,
           light=(0.3, 0.5, 1.0), ambient: float = 0.8) -> Frame:
    """Z-buffer render of point splats: each point covers a (2r+1)^2 square, r ~ 0.8 * its projected
    spacing in pixels (so jittered-grid samples leave no holes), and each pixel keeps the point with the
    smallest camera depth. Colours are shaded Lambert-style with a weak directional light so that the
    category colour stays recognisable."""
    cam = world_to_camera(surface.points, pose)
    front = np.nonzero(cam[:, 2] > NEAR)[0]
    x, y, z = cam[front, 0], cam[front, 1], cam[front, 2]
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    ui, vi = np.rint(fx * x / z + cx).astype(np.int64), np.rint(fy * y / z + cy).astype(np.int64)
    radius = np.clip(np.floor(0.8 * fx * surface.spacing[front] / z + 0.5), 0, MAX_SPLAT_RADIUS).astype(np.int64)
    pix, depth, owner = [], [], []
    for r in np.unique(radius):
        sel = np.nonzero(radius == r)[0]
        dy, dx = np.mgrid[-r:r + 1, -r:r + 1]
        uu = (ui[sel, None] + dx.ravel()).ravel()
        vv = (vi[sel, None] + dy.ravel()).ravel()
        rep = np.repeat(sel, dx.size)
        inside = (uu >= 0) & (uu < width) & (vv >= 0) & (vv < height)
        pix.append(vv[inside] * width + uu[inside])
        depth.append(z[rep[inside]])
        owner.append(front[rep[inside]])
    pix, depth, owner = np.concatenate(pix), np.concatenate(depth), np.concatenate(owner)
    order = np.lexsort((depth, pix))  # by pixel, then nearest first
    pix, depth, owner = pix[order], depth[order], owner[order]
    first = np.ones(len(pix), dtype=bool)
    first[1:] = pix[1:] != pix[:-1]
    index = np.full(height * width, -1, dtype=np.int64)
    zbuf = np.zeros(height * width, dtype=np.float32)
    index[pix[first]] = owner[first]
    zbuf[pix[first]] = depth[first]
    light = np.asarray(light, dtype=np.float64)
    light /= np.linalg.norm(light)
    shade = ambient + (1 - ambient) * np.clip(surface.normals @ light, 0, None)
    shaded = np.clip(colors * shade[:, None], 0, 255)
    rgb = np.zeros((height * width, 3), dtype=np.uint8)
    hit = index >= 0
    rgb[hit] = np.rint(shaded[index[hit]]).astype(np.uint8)
    return Frame(rgb.reshape(height, width, 3), zbuf.reshape(height, width), index.reshape(height, width))
