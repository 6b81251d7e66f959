"""Distillation images: letterboxed tensors with their ids, and a step-indexed deterministic batch order.

The order of images is a pure function of (seed, epoch): epoch e is a permutation drawn from
seed + e, epochs are concatenated into one stream, and optimizer step s takes the stream's s-th block of
`batch_size` images. A resumed run therefore replays exactly the images an uninterrupted run would
see, whatever the world size; each rank takes every world_size-th image of the block, then splits its
share into micro-batches (gradient accumulation keeps the total batch, method.md section 5).
"""

from __future__ import annotations

import math


class LetterboxDataset:
    """Items (image_id, path) -> dict(image (3,S,S) in [0,1], size (h, w) of the unpadded content, index,
    original (3,H,W) in [0,1] and scale S / long side: the crop teacher cuts regions from the original,
    as the authors' data pipeline does (DeCLIP training/data.py l.298-309))."""

    def __init__(self, items: list, image_size: int):
        self.items = list(items)
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        import torch

        from declip.data.images import letterbox, load_image

        _, path = self.items[index]
        img = load_image(path)
        boxed, scale = letterbox(img, self.image_size)
        h, w = img.shape[-2:]
        # The same rounding as letterbox: the unpadded area is the region boxes are drawn on.
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        return {"image": boxed, "size": torch.tensor(size), "index": index, "original": img, "scale": scale}


def collate(samples: list) -> dict:
    import torch

    return {
        "image": torch.stack([s["image"] for s in samples]),
        "size": torch.stack([s["size"] for s in samples]),
        "index": torch.tensor([s["index"] for s in samples]),
        "original": [s["original"] for s in samples],  # sizes differ: a list
        "scale": torch.tensor([s["scale"] for s in samples], dtype=torch.float64),
    }


def epoch_order(n_images: int, seed: int, epoch: int):
    """The permutation of image indices for one epoch (a pure function of seed and epoch)."""
    import torch

    return torch.randperm(n_images, generator=torch.Generator().manual_seed(seed * 7919 + epoch))


def step_indices(n_images: int, batch_size: int, seed: int, step: int) -> list[int]:
    """The `batch_size` image indices of optimizer step `step` (0-based) in the concatenated epoch stream."""
    start = step * batch_size
    out: list[int] = []
    epoch, offset = divmod(start, n_images)
    while len(out) < batch_size:
        order = epoch_order(n_images, seed, epoch).tolist()
        out.extend(order[offset:offset + batch_size - len(out)])
        epoch, offset = epoch + 1, 0
    return out


def total_steps(epochs: float, n_images: int, batch_size: int, max_steps: int | None) -> int:
    """ceil(epochs * n_images / batch_size), capped by max_steps (method.md section 5)."""
    steps = math.ceil(epochs * n_images / batch_size)
    return max(1, min(steps, max_steps) if max_steps else steps)


class StepBatchSampler:
    """Yields this rank's micro-batches (lists of indices) for steps start_step..end_step-1, in order.

    Each step yields exactly `accum` micro-batches of `micro_batch` indices; the trainer regroups them.
    """

    def __init__(self, n_images: int, batch_size: int, micro_batch: int, seed: int, start_step: int, end_step: int,
                 rank: int = 0, world_size: int = 1):
        if batch_size % (micro_batch * world_size):
            raise ValueError(f"batch {batch_size} is not a multiple of micro-batch {micro_batch} x world size {world_size}")
        self.n_images, self.batch_size, self.micro_batch = n_images, batch_size, micro_batch
        self.seed, self.start_step, self.end_step = seed, start_step, end_step
        self.rank, self.world_size = rank, world_size
        self.accum = batch_size // (micro_batch * world_size)

    def __len__(self) -> int:
        return (self.end_step - self.start_step) * self.accum

    def __iter__(self):
        for step in range(self.start_step, self.end_step):
            mine = step_indices(self.n_images, self.batch_size, self.seed, step)[self.rank::self.world_size]
            for i in range(self.accum):
                yield mine[i * self.micro_batch:(i + 1) * self.micro_batch]


def rank_positions(batch_size: int, micro_batch: int, rank: int, world_size: int, micro: int) -> list[int]:
    """Positions inside the global step batch of one micro-batch of a rank (to pick its regions)."""
    mine = list(range(batch_size))[rank::world_size]
    return mine[micro * micro_batch:(micro + 1) * micro_batch]
