"""Patch-affinity quality: ROC AUC of token-pair similarity for same-segment vs different-segment pairs.

The figure of issue 15 for the mini teachers: on held-out images with GT panoptic masks, a token takes
part when at least `purity` of its pixels lie in one segment (things and stuff alike; void and padding
never count); every pair of such tokens within an image is positive when both lie in the same segment.
AUC = P(score of a random positive pair > score of a random negative pair), ties counting one half
(the Mann-Whitney U statistic), pooled over images. 0.5 = no object information, 1 = perfect.
"""

from __future__ import annotations

import numpy as np


def token_segments(seg_ids: np.ndarray, size: int, patch: int, purity: float, void: int = 0) -> np.ndarray:
    """(grid*grid,) segment id of each token of the letterboxed image (long side `size`, padded
    right/bottom like declip.data.images.letterbox), -1 where no segment covers >= `purity` of the token."""
    h, w = seg_ids.shape
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    # Nearest-neighbour resize of the id map onto the letterboxed canvas (pixel centres).
    ys = np.minimum(((np.arange(nh) + 0.5) / scale).astype(int), h - 1)
    xs = np.minimum(((np.arange(nw) + 0.5) / scale).astype(int), w - 1)
    canvas = np.full((size, size), void, dtype=np.int64)
    canvas[:nh, :nw] = seg_ids[ys[:, None], xs[None, :]]
    g = size // patch
    blocks = canvas[: g * patch, : g * patch].reshape(g, patch, g, patch).transpose(0, 2, 1, 3).reshape(g * g, patch * patch)
    out = np.full(g * g, -1, dtype=np.int64)
    for t, block in enumerate(blocks):
        ids, counts = np.unique(block, return_counts=True)
        best = int(np.argmax(counts))
        if ids[best] != void and counts[best] >= purity * block.size:
            out[t] = ids[best]
    return out


def pair_scores(sim: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positive scores, negative scores) over the unordered pairs i < j of labelled tokens."""
    keep = np.flatnonzero(labels >= 0)
    s = sim[np.ix_(keep, keep)]
    lab = labels[keep]
    iu = np.triu_indices(len(keep), k=1)
    same = lab[iu[0]] == lab[iu[1]]
    vals = s[iu]
    return vals[same], vals[~same]


def roc_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Mann-Whitney AUC with average ranks for ties; nan when one class is empty."""
    pos, neg = np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)
    if not len(pos) or not len(neg):
        return float("nan")
    values = np.concatenate([pos, neg])
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    sorted_vals = values[order]
    # Average rank (1-based) per group of equal values.
    starts = np.flatnonzero(np.r_[True, sorted_vals[1:] != sorted_vals[:-1]])
    ends = np.r_[starts[1:], len(values)]
    for a, b in zip(starts, ends):
        ranks[order[a:b]] = (a + b + 1) / 2
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def row_entropy(affinity: np.ndarray) -> float:
    """Mean entropy of the rows of a non-negative (N, N) map, each row normalised, over log N: 1 = uniform
    rows (an affinity that carries no structure, whatever its AUC), 0 = one-hot rows."""
    a = np.asarray(affinity, dtype=np.float64)
    p = a / np.maximum(a.sum(-1, keepdims=True), 1e-300)
    h = -(p * np.log(np.where(p > 0, p, 1.0))).sum(-1)
    return float(h.mean() / np.log(a.shape[-1]))
