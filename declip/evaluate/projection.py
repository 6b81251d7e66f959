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


ROUNDINGS = ("truncate", "round")


def project(points: np.ndarray, pose: np.ndarray, K: np.ndarray, rounding: str = "round"):
    """Pixel coordinates (u, v) and camera depth z of world points for a camera-to-world `pose` (x right,
    y down, z forward). rounding `truncate`: toward zero, as OpenMask3D stores the float division in an int
    array (features_extractor.py `get_visible_points_view`, `projected_points ... dtype=int`); `round`:
    nearest pixel centre (our choice)."""
    cam = world_to_camera(points, pose)
    z = cam[:, 2]
    snap = np.trunc if rounding == "truncate" else np.rint
    with np.errstate(divide="ignore", invalid="ignore"):
        u = snap(K[0, 0] * cam[:, 0] / z + K[0, 2])
        v = snap(K[1, 1] * cam[:, 1] / z + K[1, 2])
    return u, v, z


def visible_points(points: np.ndarray, pose: np.ndarray, K: np.ndarray, depth: np.ndarray,
                   tolerance: float, rounding: str = "round") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Depth test (OpenMask3D): a point is visible when it projects inside the image, in front of the
    camera, onto a valid sensor depth d with |d - z| <= tolerance. Returns (visible (N,), u, v) with u, v
    integer pixel indices (meaningful where visible)."""
    h, w = depth.shape
    u, v, z = project(points, pose, K, rounding)
    inside = (z > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    ui = np.where(inside, u, 0).astype(np.int64)
    vi = np.where(inside, v, 0).astype(np.int64)
    sensor = depth[vi, ui]
    visible = inside & (sensor > 0) & (np.abs(sensor - z) <= tolerance)
    return visible, ui, vi


def view_counts(visible: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(F, K) visible points of each mask in each frame, from visible (F, N) and masks (K, N) booleans."""
    return visible.astype(np.int32) @ masks.T.astype(np.int32)


def view_pixel_counts(visible: np.ndarray, us: np.ndarray, vs: np.ndarray, masks: np.ndarray, width: int) -> np.ndarray:
    """(F, K) DISTINCT pixels the visible points of each mask project to in each frame: OpenMask3D ranks views
    by the pixels its per-view mask image holds (features_extractor.py `get_top_k_indices_per_mask` sums
    `visible_points_in_view_in_mask`, where points landing on one pixel set it once)."""
    counts = np.zeros((visible.shape[0], masks.shape[0]), dtype=np.int64)
    for f in range(visible.shape[0]):
        idx = np.flatnonzero(visible[f])
        j, n = np.nonzero(masks[:, idx])  # (mask, visible point) pairs
        pixel = vs[f, idx[n]].astype(np.int64) * width + us[f, idx[n]]
        pairs = np.unique(j.astype(np.int64) * (pixel.max(initial=0) + 1) + pixel)
        owner = pairs // (pixel.max(initial=0) + 1)
        counts[f] = np.bincount(owner, minlength=masks.shape[0])
    return counts


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
