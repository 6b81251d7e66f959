"""Region sampling (method.md section 3): the grid choices, the tiling, the shuffle/cap and determinism."""

import collections

import numpy as np
import pytest
import torch

from declip.distill.regions import grid_cells, grid_choices, image_regions, region_generator, sample_regions, to_rois

# Hand-enumerated from "m in 1..6, n in ceil(m/2)..min(2m, 6)".
EXPECTED_24 = [
    (1, 1), (1, 2),
    (2, 1), (2, 2), (2, 3), (2, 4),
    (3, 2), (3, 3), (3, 4), (3, 5), (3, 6),
    (4, 2), (4, 3), (4, 4), (4, 5), (4, 6),
    (5, 3), (5, 4), (5, 5), (5, 6),
    (6, 3), (6, 4), (6, 5), (6, 6),
]


def test_the_24_grid_choices():
    assert grid_choices(6) == EXPECTED_24
    assert grid_choices(1) == [(1, 1)]
    assert grid_choices(2) == [(1, 1), (1, 2), (2, 1), (2, 2)]


@pytest.mark.parametrize("rows,cols", [(1, 1), (2, 3), (3, 5), (6, 6)])
def test_cells_tile_the_image(rows, cols):
    h, w = 60, 90  # divisible by every rows/cols used, so cells land on integer pixels
    cells = grid_cells(h, w, rows, cols).numpy()
    assert cells.shape == (rows * cols, 4)
    cover = np.zeros((h, w), dtype=int)
    for x1, y1, x2, y2 in cells:
        assert x2 - x1 == pytest.approx(w / cols) and y2 - y1 == pytest.approx(h / rows)
        cover[round(y1):round(y2), round(x1):round(x2)] += 1
    assert (cover == 1).all()  # every pixel in exactly one cell: a tiling without gaps or overlaps


def test_cells_of_non_integer_sizes_sum_to_the_area():
    cells = grid_cells(37.0, 53.0, 5, 4)
    areas = (cells[:, 2] - cells[:, 0]) * (cells[:, 3] - cells[:, 1])
    assert float(areas.sum()) == pytest.approx(37 * 53, rel=1e-5)
    assert float(cells[:, 0].min()) == 0 and float(cells[:, 2].max()) == pytest.approx(53)
    assert float(cells[:, 1].min()) == 0 and float(cells[:, 3].max()) == pytest.approx(37)


def _grid_of(boxes, h, w):
    widths = {round(float(b[2] - b[0]), 3) for b in boxes}
    heights = {round(float(b[3] - b[1]), 3) for b in boxes}
    assert len(widths) == 1 and len(heights) == 1
    return round(h / heights.pop()), round(w / widths.pop())


def test_image_regions_are_cells_of_one_choice_shuffled_and_capped():
    h, w = 60.0, 60.0
    seen = collections.Counter()
    for s in range(600):
        boxes = image_regions(h, w, 6, 20, torch.Generator().manual_seed(s))
        m, n = _grid_of(boxes, h, w)
        assert (m, n) in EXPECTED_24
        assert boxes.shape[0] == min(m * n, 20)
        cells = {tuple(np.round(c, 3)) for c in grid_cells(h, w, m, n).numpy()}
        assert all(tuple(np.round(b, 3)) in cells for b in boxes.numpy())
        assert len({tuple(np.round(b, 3)) for b in boxes.numpy()}) == boxes.shape[0]  # no duplicates
        seen[(m, n)] += 1
    assert set(seen) == set(EXPECTED_24)
    # Uniform over the 24 choices: 25 expected each; a loose bound that a biased sampler would fail.
    assert max(seen.values()) < 50 and min(seen.values()) > 8


def test_shuffle_changes_order():
    orders = set()
    for s in range(20):
        boxes = image_regions(60.0, 60.0, 1, 20, torch.Generator().manual_seed(s))
        assert boxes.shape == (1, 4)
    for s in range(50):
        boxes = image_regions(60.0, 60.0, 6, 20, torch.Generator().manual_seed(s))
        if boxes.shape[0] >= 4:
            orders.add(tuple(boxes[:, 0].tolist() + boxes[:, 1].tolist()))
    assert len(orders) > 5


def test_regions_are_deterministic_per_seed_step_position():
    a = sample_regions([(40, 96), (96, 70)], 6, 20, [region_generator(0, 3, 0), region_generator(0, 3, 1)])
    b = sample_regions([(40, 96), (96, 70)], 6, 20, [region_generator(0, 3, 0), region_generator(0, 3, 1)])
    c = sample_regions([(40, 96), (96, 70)], 6, 20, [region_generator(0, 4, 0), region_generator(0, 4, 1)])
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, c))
    # Boxes stay inside each image's unpadded area.
    for boxes, (h, w) in zip(a, [(40, 96), (96, 70)]):
        assert float(boxes[:, 2].max()) <= w + 1e-4 and float(boxes[:, 3].max()) <= h + 1e-4
        assert float(boxes[:, :2].min()) >= 0


def test_to_rois_layout():
    rois = to_rois([torch.tensor([[0.0, 0, 4, 4]]), torch.tensor([[1.0, 1, 2, 2], [2.0, 2, 3, 3]])])
    assert rois.tolist() == [[0, 0, 0, 4, 4], [1, 1, 1, 2, 2], [1, 2, 2, 3, 3]]
