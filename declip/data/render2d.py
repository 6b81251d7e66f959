"""Vectorised numpy drawing for the mini 2D world: shape masks, object surfaces, stuff textures.

Everything works on whole pixel grids (no per-pixel Python loops) so that hundreds of scenes render
in seconds. Colours are float arrays in [0, 255]; randomness comes only from the caller's Generator.
"""

from __future__ import annotations

import numpy as np

# Unit-radius polygons (x right, y down), built once. The star alternates outer and inner radius.
_STAR = [(np.sin(a) * r, -np.cos(a) * r)
         for i, (a, r) in enumerate((k * np.pi / 5, 1.0 if k % 2 == 0 else 0.42) for k in range(10))]
_POLYGONS = {
    "triangle": [(0.0, -1.0), (0.95, 0.75), (-0.95, 0.75)],
    "diamond": [(0.0, -1.0), (0.8, 0.0), (0.0, 1.0), (-0.8, 0.0)],
    "hexagon": [(np.cos(a), np.sin(a)) for a in np.arange(6) * np.pi / 3],
    "star": _STAR,
}
SHAPES = ("circle", "square", "triangle", "star", "ring", "diamond", "cross", "hexagon", "rect_wide", "rect_tall")


def _polygon_inside(u: np.ndarray, v: np.ndarray, verts) -> np.ndarray:
    """Even-odd crossing test of every (u, v) against one polygon, vectorised over pixels."""
    inside = np.zeros(u.shape, dtype=bool)
    n = len(verts)
    for i in range(n):
        (x0, y0), (x1, y1) = verts[i], verts[(i + 1) % n]
        straddles = (y0 > v) != (y1 > v)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_cross = x0 + (v - y0) * (x1 - x0) / (y1 - y0)
        inside ^= straddles & (u < x_cross)
    return inside


def local_coords(size: int, cy: float, cx: float, radius: float, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in the object's frame: centred, rotated by `angle`, unit = radius."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    dx, dy = xx - cx, yy - cy
    c, s = np.cos(angle), np.sin(angle)
    return (c * dx + s * dy) / radius, (-s * dx + c * dy) / radius


def shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of a unit-radius shape in local coordinates (see `local_coords`)."""
    au, av = np.abs(u), np.abs(v)
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "ring":
        rr = u * u + v * v
        return (rr <= 1.0) & (rr >= 0.5 ** 2)
    if shape == "square":
        return np.maximum(au, av) <= 0.8
    if shape == "rect_wide":
        return (au <= 1.0) & (av <= 0.42)
    if shape == "rect_tall":
        return (au <= 0.42) & (av <= 1.0)
    if shape == "cross":
        return ((au <= 1.0) & (av <= 0.3)) | ((au <= 0.3) & (av <= 1.0))
    if shape in _POLYGONS:
        return _polygon_inside(u, v, _POLYGONS[shape])
    raise ValueError(f"unknown 2D shape {shape!r}; known: {SHAPES}")


def value_noise(h: int, w: int, cells: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth noise in [-1, 1]: a random (cells+1)^2 lattice, bilinearly interpolated to h x w."""
    lattice = rng.uniform(-1.0, 1.0, size=(cells + 1, cells + 1))
    gy, gx = np.linspace(0, cells, h, endpoint=False), np.linspace(0, cells, w, endpoint=False)
    y0, x0 = gy.astype(int), gx.astype(int)
    fy, fx = (gy - y0)[:, None], (gx - x0)[None, :]
    top = lattice[y0][:, x0] * (1 - fx) + lattice[y0][:, x0 + 1] * fx
    bottom = lattice[y0 + 1][:, x0] * (1 - fx) + lattice[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def jitter_color(color, rng: np.random.Generator, amount: float) -> np.ndarray:
    return np.clip(np.asarray(color, dtype=np.float64) + rng.normal(0.0, amount, size=3), 0, 255)


def object_surface(size: int, color, u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An object's colour over the whole grid: jittered base colour, directional shading, grain, optional pattern."""
    base = jitter_color(color, rng, 12.0)
    phi = rng.uniform(0, 2 * np.pi)
    shade = 1.0 + rng.uniform(0.08, 0.2) * (u * np.cos(phi) + v * np.sin(phi))
    shade = shade + 0.05 * value_noise(size, size, 12, rng)
    if rng.random() < 0.4:  # faint stripes or spots, so texture alone never identifies a class
        freq, theta = rng.uniform(2.5, 5.0), rng.uniform(0, np.pi)
        wave = np.sin(np.pi * freq * (u * np.cos(theta) + v * np.sin(theta)))
        shade = shade * np.where(wave > 0.3, 0.88, 1.0)
    return np.clip(base[None, None, :] * shade[..., None], 0, 255)


def stuff_texture(texture: str, color, size: int, rng: np.random.Generator) -> np.ndarray:
    """A full-image texture for one stuff class (noise, gradient, bricks, stripes, waves)."""
    base = jitter_color(color, rng, 10.0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    if texture == "noise":
        shade = 1.0 + 0.22 * value_noise(size, size, 6, rng) + 0.12 * value_noise(size, size, 24, rng)
    elif texture == "gradient":
        shade = 1.2 - 0.35 * yy / size + 0.03 * value_noise(size, size, 4, rng)
    elif texture == "bricks":
        bh, bw = rng.integers(6, 11), rng.integers(12, 21)
        yshift = yy + rng.integers(0, bh)
        offset = (yshift // bh % 2) * (bw // 2)  # alternate courses are staggered by half a brick
        mortar = (yshift % bh < 1) | ((xx + offset) % bw < 1)
        brick_tone = 1.0 + 0.08 * value_noise(size, size, 8, rng)
        shade = np.where(mortar, 1.35, brick_tone)
    elif texture == "stripes":
        period, theta = rng.uniform(7, 13), rng.choice([0.0, np.pi / 2]) + rng.uniform(-0.15, 0.15)
        coord = xx * np.cos(theta) + yy * np.sin(theta)
        shade = np.where((coord % period) < period * 0.5, 1.0, 0.82) + 0.05 * value_noise(size, size, 16, rng)
    elif texture == "waves":
        f1, f2 = rng.uniform(0.3, 0.6), rng.uniform(0.05, 0.12)
        shade = 1.0 + 0.18 * np.sin(f1 * yy + 3.0 * np.sin(f2 * xx + rng.uniform(0, 2 * np.pi)))
    else:
        raise ValueError(f"unknown stuff texture {texture!r}")
    return np.clip(base[None, None, :] * shade[..., None], 0, 255)
