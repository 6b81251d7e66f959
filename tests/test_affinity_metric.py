"""Patch-affinity ROC AUC (issue 15's teacher figure): token labels, pairs and the Mann-Whitney AUC,
checked against hand-made cases and a brute-force pair count."""

import itertools

import numpy as np
import pytest

from declip.metrics.affinity import pair_scores, roc_auc, row_entropy, token_segments


def _auc_brute(pos, neg):
    """P(pos > neg) + 0.5 P(pos == neg), by enumerating every (positive, negative) pair."""
    total = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return total / (len(pos) * len(neg))


def test_auc_matches_brute_force_with_ties():
    rng = np.random.default_rng(0)
    pos = rng.integers(0, 6, 40).astype(float)  # many ties
    neg = rng.integers(0, 5, 55).astype(float)
    assert roc_auc(pos, neg) == pytest.approx(_auc_brute(pos, neg), abs=1e-12)


def test_auc_hand_cases():
    assert roc_auc([3, 4], [1, 2]) == 1.0
    assert roc_auc([1, 2], [3, 4]) == 0.0
    assert roc_auc([1, 1], [1]) == 0.5
    assert roc_auc([2, 0], [1]) == 0.5
    assert np.isnan(roc_auc([], [1.0]))


def test_token_segments_purity_void_and_letterbox():
    # 4x4 px image, patch 2, size 4: tokens = 2x2 blocks.
    seg = np.array([[1, 1, 2, 2],
                    [1, 1, 2, 0],
                    [3, 3, 0, 0],
                    [3, 1, 0, 0]])
    got = token_segments(seg, size=4, patch=2, purity=0.75)
    # top-left all 1; top-right 3/4 are 2; bottom-left 3/4 are 3; bottom-right void.
    assert got.tolist() == [1, 2, 3, -1]
    assert token_segments(seg, size=4, patch=2, purity=1.0).tolist() == [1, -1, -1, -1]
    # A 2x4 (h x w) map letterboxed to 4: the bottom half is padding (void), never a segment.
    wide = np.array([[5, 5, 6, 6], [5, 5, 6, 6]])
    assert token_segments(wide, size=4, patch=2, purity=0.75).tolist() == [5, 6, -1, -1]
    # Upscaled 2x2 -> 4x4 (nearest): each pixel becomes one token.
    small = np.array([[7, 8], [9, 7]])
    assert token_segments(small, size=4, patch=2, purity=0.75).tolist() == [7, 8, 9, 7]


def test_pair_scores_split_same_and_different_segments():
    labels = np.array([1, 1, 2, -1])
    sim = np.array([[1.0, 0.9, 0.2, 0.5],
                    [0.9, 1.0, 0.3, 0.5],
                    [0.2, 0.3, 1.0, 0.5],
                    [0.5, 0.5, 0.5, 1.0]])
    pos, neg = pair_scores(sim, labels)
    assert sorted(pos.tolist()) == [0.9]  # (0,1); token 3 is unlabelled, the diagonal is excluded
    assert sorted(neg.tolist()) == [0.2, 0.3]


def test_row_entropy_is_one_for_uniform_rows_and_zero_for_one_hot():
    assert row_entropy(np.full((4, 4), 0.25)) == pytest.approx(1.0)
    assert row_entropy(np.eye(5) * 3.0) == pytest.approx(0.0)
    # Rows [1,1,0,0] (normalised: two halves) have entropy log 2 = half of log 4.
    assert row_entropy(np.array([[1.0, 1.0, 0, 0]] * 4)) == pytest.approx(0.5)
