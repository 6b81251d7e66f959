"""Region sampling for the content loss: one random grid per image, its cells as boxes (method.md section 3).

Boxes are in pixel coordinates of the letterboxed image (x1, y1, x2, y2) and cover only the unpadded
image area, so a cell never contains padding. Sampling uses an explicit torch.Generator: the trainer
seeds one per image from (seed, step, position), so regions do not depend on world size or resume.
"""

from __future__ import annotations

import math


def grid_choices(grid_max: int) -> list[tuple[int, int]]:
    """All (rows m, cols n) with m in 1..grid_max, n in ceil(m/2)..min(2m, grid_max) (CLIPSelf code; 24 for 6)."""
    return [(m, n) for m in range(1, grid_max + 1) for n in range(math.ceil(m / 2), min(2 * m, grid_max) + 1)]


def grid_cells(height: float, width: float, rows: int, cols: int):
    """(rows*cols, 4) float boxes of equal cells tiling [0, width] x [0, height], row-major."""
    import torch

    ys = torch.linspace(0.0, float(height), rows + 1, dtype=torch.float64)
    xs = torch.linspace(0.0, float(width), cols + 1, dtype=torch.float64)
    y1, x1 = torch.meshgrid(ys[:-1], xs[:-1], indexing="ij")
    y2, x2 = torch.meshgrid(ys[1:], xs[1:], indexing="ij")
    return torch.stack([x1, y1, x2, y2], dim=-1).reshape(-1, 4).float()


def image_regions(height: float, width: float, grid_max: int, max_regions: int, generator):
    """One image's regions: a grid drawn uniformly from `grid_choices`, its cells shuffled, at most `max_regions` kept.

    height, width: the unpadded image inside the letterbox (pixels). Returns (k, 4) float32 boxes
    (x1, y1, x2, y2) in letterbox pixels (CLIPSelf code / method.md section 3).
    """
    import torch

    choices = grid_choices(grid_max)
    m, n = choices[int(torch.randint(len(choices), (1,), generator=generator))]
    cells = grid_cells(height, width, m, n)
    return cells[torch.randperm(cells.shape[0], generator=generator)[:max_regions]]


def sample_regions(content_sizes, grid_max: int, max_regions: int, generators) -> list:
    """`image_regions` for every (h, w) of a batch; `generators` is one generator or one per image."""
    gens = generators if isinstance(generators, (list, tuple)) else [generators] * len(content_sizes)
    return [image_regions(float(h), float(w), grid_max, max_regions, g) for (h, w), g in zip(content_sizes, gens)]


def to_rois(boxes: list):
    """List of per-image (k_i, 4) boxes -> (R, 5) RoIs (batch index, x1, y1, x2, y2), torchvision's layout."""
    import torch

    idx = [torch.full((b.shape[0], 1), float(i), dtype=b.dtype, device=b.device) for i, b in enumerate(boxes)]
    return torch.cat([torch.cat(idx), torch.cat(boxes)], dim=1)


def region_generator(seed: int, step: int, position: int):
    """The generator of one image's regions, a pure function of (seed, step, position in the step's batch).

    Resume and any world size / accumulation split therefore draw the same regions for the same image.
    """
    import torch

    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 4099 + position)
