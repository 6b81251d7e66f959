"""Correspondence-based rigid registration for the Oryon protocol (protocols.md section 7).

Mutual nearest neighbours between two feature sets, lifting pixels to camera-frame 3D points with depth and
intrinsics, the least-squares rigid fit of matched points (Kabsch; Umeyama 1991 without scale) and a seeded
RANSAC over 3-point fits with a final refit on the inliers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def mutual_nn(fa: np.ndarray, fb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j) such that b_j is a's nearest neighbour of a_i and a_i is b_j's, by cosine
    similarity of L2-normalised rows."""
    if len(fa) == 0 or len(fb) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    sim = fa @ fb.T
    ab = sim.argmax(axis=1)
    ba = sim.argmax(axis=0)
    i = np.nonzero(ba[ab] == np.arange(len(fa)))[0]
    return i, ab[i]


def lift(u: np.ndarray, v: np.ndarray, depth: np.ndarray, K: np.ndarray) -> np.ndarray:
    """(N, 3) camera-frame points of pixels (u, v) with depth values `depth` (same unit out)."""
    return np.stack([(u - K[0, 2]) * depth / K[0, 0], (v - K[1, 2]) * depth / K[1, 1], depth], 1)


def kabsch(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """R, t minimising sum |R src_i + t - dst_i|^2 with det R = +1 (Umeyama 1991, scale fixed to 1)."""
    cs, cd = src.mean(0), dst.mean(0)
    H = (src - cs).T @ (dst - cd)
    U, _, Vt = np.linalg.svd(H)
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(Vt.T @ U.T)) or 1.0])
    R = Vt.T @ D @ U.T
    return R, cd - R @ cs


def _kabsch_batch(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kabsch for a batch of (B, k, 3) point sets."""
    cs, cd = src.mean(1, keepdims=True), dst.mean(1, keepdims=True)
    H = np.einsum("bki,bkj->bij", src - cs, dst - cd)
    U, _, Vt = np.linalg.svd(H)
    det = np.sign(np.linalg.det(np.einsum("bji,bkj->bik", Vt, U)))
    det[det == 0] = 1.0
    D = np.tile(np.eye(3), (len(src), 1, 1))
    D[:, 2, 2] = det
    R = np.einsum("bji,bjk,blk->bil", Vt, D, U)  # V D U^T
    t = cd[:, 0] - np.einsum("bij,bj->bi", R, cs[:, 0])
    return R, t


@dataclass
class Fit:
    R: np.ndarray
    t: np.ndarray
    inliers: np.ndarray  # bool (N,)


def ransac(src: np.ndarray, dst: np.ndarray, threshold: float, iterations: int, seed: int,
           batch: int = 256) -> Fit | None:
    """Seeded RANSAC: 3-point Kabsch hypotheses, inliers |R src + t - dst| < threshold, the hypothesis with
    most inliers (first found on ties) refitted on its inliers. None with fewer than 3 correspondences."""
    n = len(src)
    if n < 3:
        return None
    rng = np.random.default_rng(seed)
    best_count, best = -1, None
    done = 0
    while done < iterations:
        b = min(batch, iterations - done)
        idx = np.stack([rng.choice(n, 3, replace=False) for _ in range(b)])
        R, t = _kabsch_batch(src[idx], dst[idx])
        res = np.linalg.norm(np.einsum("bij,nj->bni", R, src) + t[:, None] - dst[None], axis=2)
        counts = (res < threshold).sum(1)
        k = int(counts.argmax())
        if counts[k] > best_count:
            best_count, best = int(counts[k]), res[k] < threshold
        done += b
    if best_count < 3:
        R, t = kabsch(src, dst)
        return Fit(R, t, np.ones(n, bool))
    R, t = kabsch(src[best], dst[best])
    return Fit(R, t, best)
