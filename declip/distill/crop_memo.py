"""A shared memo of the content-loss targets: the frozen CLIP's embeddings of the region crops.

Regions are drawn from (seed, step, position) and the content teacher is the frozen original CLIP
(method.md section 3), so every variant distilled with one seed asks for the same crop embeddings; on the
mini preset they are a third of a distillation job's time. The memo is content-addressed: a key hashes the
teacher's weights, the crop settings, the thread count and precision, and the exact pixels and boxes of the
micro-batch, so a hit returns what the computation would have returned, bit for bit. Entries are written
atomically; jobs running at once may both compute an entry, never read a partial one.
Off by default (`distill.crop_target_cache`): the paper computes the targets in every run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from declip.models.digest import state_digest, update_digest

log = logging.getLogger(__name__)


class CropTargetMemo:
    def __init__(self, folder: str | Path, teacher, settings: dict):
        import torch

        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.prefix = json.dumps({"teacher": state_digest(teacher), "threads": torch.get_num_threads(), **settings},
                                 sort_keys=True, default=str)
        self.hits = self.misses = 0

    def key(self, originals: list, boxes: list) -> str:
        h = hashlib.sha256(self.prefix.encode())
        for image, box in zip(originals, boxes):
            update_digest(h, image)
            update_digest(h, box)
        return h.hexdigest()

    def __call__(self, originals: list, boxes: list, compute, device=None):
        """The memoised `compute()` for these images and boxes."""
        import torch

        path = self.folder / f"{self.key(originals, boxes)}.pt"
        if path.exists():
            try:
                out = torch.load(path, map_location="cpu", weights_only=True)
                self.hits += 1
                return out.to(device) if device is not None else out
            except Exception as e:  # noqa: BLE001 - an unreadable entry is recomputed and replaced
                log.warning("crop-target memo: recomputing unreadable %s (%s)", path, e)
        out = compute()
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        torch.save(out.detach().cpu(), tmp)
        tmp.replace(path)
        self.misses += 1
        return out
