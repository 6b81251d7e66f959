"""Which 3D mask points each posed RGB-D frame sees, and the 2D masks and crops they give (OpenMask3D).

OpenMask3D (openmask3d/mask_features_computation/features_extractor.py) projects every vertex into every
k-th frame, keeps the points inside the image whose projected depth agrees with the sensor depth within
`vis_threshold` metres, ranks the views of each mask by its number of visible points (top-k), and forms
the 2D mask from the projected visible points (then refined by SAM, which this suite does not run: the
rasterised points are dilated a little instead). Crops are the mask's box grown by `level * ratio` of its
size per level (mask2box_multi_level).
"""

from __future__ import annotations

import numpy as np

from declip.data.render3d import world_to_camera


def project(points: np.ndarray, pose: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel coordinates (u, v) rounded to the nearest pixel centre, and camera depth z, of world points
    for a camera-to-world `pose` (x right, y down, z forward)."""
    cam = world_to_camera(points, pose)
    z = cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.rint(K[0, 0] * cam[:, 0] / z + K[0, 2])
        v = np.rint(K[1, 1] * cam[:, 1] / z + K[1, 2])
    return u, v, z


def visible_points(points: np.ndarray, pose: np.ndarray, K: np.ndarray, depth: np.ndarray,
                   tolerance: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Depth test (OpenMask3D): a point is visible when it projects inside the image, in front of the
    camera, onto a valid sensor depth d with |d - z| <= tolerance. Returns (visible (N,), u, v) with u, v
    integer pixel indices (meaningful where visible)."""
    h, w = depth.shape
    u, v, z = project(points, pose, K)
    inside = (z > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    ui = np.where(inside, u, 0).astype(np.int64)
    vi = np.where(inside, v, 0).astype(np.int64)
    sensor = depth[vi, ui]
    visible = inside & (sensor > 0) & (np.abs(sensor - z) <= tolerance)
    return visible, ui, vi


def view_counts(visible: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(F, K) visible points of each mask in each frame, from visible (F, N) and masks (K, N) booleans."""
    return visible.astype(np.int32) @ masks.T.astype(np.int32)


def top_views(counts: np.ndarray, k: int) -> list[np.ndarray]:
    """Per mask, indices of its top-k frames by visible points, best first, frames with none dropped."""
    order = np.argsort(-counts, axis=0, kind="stable")[:k]  # (k, K)
    return [order[:, j][counts[order[:, j], j] > 0] for j in range(counts.shape[1])]


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation with a (2r+1)^2 square structuring element."""
    if radius <= 0:
        return mask
    from scipy.ndimage import binary_dilation

    return binary_dilation(mask, structure=np.ones((2 * radius + 1, 2 * radius + 1), dtype=bool))


def points_mask(u: np.ndarray, v: np.ndarray, shape: tuple[int, int], radius: int) -> np.ndarray:
    """2D mask rasterised from projected visible points (integer u, v), dilated by `radius` pixels."""
    mask = np.zeros(shape, dtype=bool)
    mask[v, u] = True
    return dilate(mask, radius)


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2) tight box of a 2D mask, exclusive max (OpenMask3D mask2box)."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def multilevel_boxes(mask: np.ndarray, levels: int, expansion: float) -> list[tuple[int, int, int, int]]:
    """OpenMask3D mask2box_multi_level: level l grows the box by int(size * ratio) * l on each side,
    clipped to the image."""
    x1, y1, x2, y2 = mask_box(mask)
    h, w = mask.shape
    out = []
    for level in range(levels):
        ex, ey = int(abs(x2 - x1) * expansion) * level, int(abs(y2 - y1) * expansion) * level
        out.append((max(0, x1 - ex), max(0, y1 - ey), min(w, x2 + ex), min(h, y2 + ey)))
    return out
