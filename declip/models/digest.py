"""Content digests of tensors and module weights (sha256 over names, shapes, dtypes and raw bytes), for
caches whose entries must follow the exact values: the crop-target memo and the text-embedding cache."""

from __future__ import annotations

import hashlib


def update_digest(h, tensor) -> None:
    """Feed one tensor's shape, dtype and raw bytes to the hash `h` (raw bytes: bf16 has no numpy dtype)."""
    import torch

    t = tensor.detach().cpu().contiguous().flatten()
    h.update(f"{tuple(tensor.shape)}{t.dtype}".encode())
    h.update(t.view(torch.uint8).numpy().tobytes())


def state_digest(module, skip_prefix: str | None = None) -> str:
    """sha256 over a module's state dict, without the entries whose name starts with `skip_prefix`."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        if skip_prefix and name.startswith(skip_prefix):
            continue
        h.update(name.encode())
        update_digest(h, tensor)
    return h.hexdigest()
