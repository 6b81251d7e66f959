"""Image listing, loading and the one letterbox every view of an image goes through.

The student (560 px), the VFM (grid x patch px), SD (512 px) and the crops all see letterboxes of the
same image (long side resized, zero padding right/bottom), so their token grids align cell for cell.
"""

from __future__ import annotations

from pathlib import Path

from declip.config import resolve_path
from declip.errors import UserFacingError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def image_dir(dataset_spec: dict) -> Path:
    root = resolve_path(dataset_spec["root"])
    return root / dataset_spec["split"] if dataset_spec.get("split") else root


def list_images(dataset_spec: dict) -> list[tuple[str, Path]]:
    """(image_id, path) for every image of the dataset split, sorted by id; id = file stem."""
    folder = image_dir(dataset_spec)
    if not folder.is_dir():
        raise UserFacingError(f"image folder {folder} does not exist: run the dataset step for {dataset_spec['root']} first")
    items = sorted((p.stem, p) for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not items:
        raise UserFacingError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return items


def load_image(path: str | Path):
    """float32 tensor (3, H, W) in [0, 1]."""
    import numpy as np
    import torch
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt file (PIL raises these)
        raise unreadable_image(path, e) from None
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def unreadable_image(path: str | Path, err: Exception) -> UserFacingError:
    """The error for a truncated or corrupt image: the file, its dataset and how to get a good copy."""
    path = Path(path).absolute()
    for folder in path.parents:
        if (folder / "MANIFEST.json").is_file():  # a synthetic mini world: rebuilt from its seed
            return UserFacingError(
                f"image {path} of the dataset in {folder} is unreadable ({err}). Rebuild the dataset: delete "
                f"{folder} and run snakemake again (it is synthesised from its seed)")
        if (folder / "checksums.lock.json").is_file() or (folder / ".unpacked").is_dir():  # a download
            return UserFacingError(
                f"image {path} of the dataset in {folder} is unreadable ({err}). Re-download it: delete "
                f"{folder / '.unpacked'} and the dataset's marker in data/.downloads/, then run snakemake again "
                "(the download rule verifies every file's checksum)")
    return UserFacingError(f"image {path} is unreadable ({err}); replace it with a complete copy "
                           "(re-download or rebuild its dataset)")


def letterbox(img, size: int):
    """Resize the long side to `size` (bilinear, antialiased) and zero-pad right/bottom to size x size.

    Accepts (3,H,W) or (B,3,H,W); returns (padded, scale) with scale = size / long side.
    """
    import torch.nn.functional as F

    batched = img.dim() == 4
    x = img if batched else img[None]
    h, w = x.shape[-2:]
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    x = F.pad(x, (0, size - nw, 0, size - nh))
    return (x if batched else x[0]), scale


def normalize(x, mean, std):
    import torch

    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return (x - m) / s
