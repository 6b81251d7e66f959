"""`declip features`: dense features (content map, context tokens) of images, saved to one .npz.

Input: an image file, a folder of images (png/jpg), or a .npy float32 array (N,3,H,W) of pixels that are
already normalised (used as they are: H and W must be multiples of the patch size). Images are
letterboxed to --image-size (declip.data.images.letterbox) and normalised with student.mean/std.

Output arrays: `content` (N,C,h,w) float32; `context` (N,h*w,D') float32 - for `vanilla` and `value`,
which have no context tokens, an empty (N,h*w,0) array; `image_ids` (str); `scales` (letterbox scale per
image, 1 for .npy input); `grid` (h,w); `mode`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from declip.errors import UserFacingError

log = logging.getLogger(__name__)


def _method_choices(key: str) -> list[str]:
    """Allowed values of a `method` key, from the config schema (the single source of truth)."""
    from declip.config import load_schema

    return list(load_schema()["properties"]["method"]["properties"][key]["enum"])


def add_arguments(parser) -> None:
    parser.add_argument("--model", default=None,
                        help="open_clip model name (default: config student.model; its custom_config applies only then).")
    parser.add_argument("--checkpoint", default=None, help="Weights file (default: config student.checkpoint).")
    parser.add_argument("--checkpoint-format", choices=["eva-clip", "open_clip"], default=None,
                        help="Key layout of --checkpoint (default: config student.checkpoint_format).")
    parser.add_argument("--mode", choices=_method_choices("dense_mode"), default=None,
                        help="Last-block attention (default: config method.dense_mode).")
    parser.add_argument("--attn-scale", choices=_method_choices("attn_scale"), default=None,
                        help="q-q/k-k logit scale; auto = the authors' code for the tower (default: config method.attn_scale).")
    parser.add_argument("--context-proj", choices=_method_choices("context_proj"), default=None,
                        help="Projection forming the context tokens; auto = the mode's own (qq: Q, kk: K, csa: Q||K) "
                             "(default: config method.context_proj).")
    parser.add_argument("--image-size", type=int, default=None,
                        help="Letterbox size in pixels, a multiple of the patch size (default: config student.image_size).")
    parser.add_argument("--input", required=True, help="Image file, folder of images, or .npy (N,3,H,W) normalised pixels.")
    parser.add_argument("--out", required=True, help="Output .npz file.")
    parser.add_argument("--batch-size", type=int, default=8, help="Images per forward.")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N.")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                        help="auto = bf16 autocast on CUDA GPUs that support it, fp32 otherwise.")


def _student_cfg(cfg: dict, model: str | None, checkpoint: str | None) -> dict:
    student = dict(cfg["student"])
    if model and model != student["model"]:
        if not checkpoint:
            raise UserFacingError(f"--model {model} differs from config student.model ({student['model']}): "
                                  "give its weights with --checkpoint")
        student.update(model=model, custom_config=None)
    return student


def _batches(source: Path, image_size: int, batch_size: int, mean, std):
    """Yield (ids, pixels (B,3,H,W) normalised, scales) for an image file, a folder or a .npy array."""
    import numpy as np
    import torch

    from declip.data.images import IMAGE_SUFFIXES, letterbox, list_images, load_image, normalize

    if source.suffix.lower() == ".npy":
        if not source.is_file():
            raise UserFacingError(f"--input {source} does not exist")
        arr = np.load(source, mmap_mode="r")
        if arr.ndim != 4 or arr.shape[1] != 3:
            raise UserFacingError(f"--input {source} has shape {arr.shape}; expected (N,3,H,W) normalised pixels")
        for i in range(0, arr.shape[0], batch_size):
            chunk = torch.from_numpy(np.array(arr[i:i + batch_size], dtype=np.float32))  # a writable copy
            yield [str(j) for j in range(i, i + chunk.shape[0])], chunk, [1.0] * chunk.shape[0]
        return
    if source.is_dir():
        items = list_images({"root": str(source.resolve())})
    elif source.is_file() and source.suffix.lower() in IMAGE_SUFFIXES:
        items = [(source.stem, source)]
    else:
        raise UserFacingError(f"--input {source} is not an image ({', '.join(IMAGE_SUFFIXES)}), "
                              "a folder of images or a .npy file")
    for i in range(0, len(items), batch_size):
        chunk = items[i:i + batch_size]
        boxed = [letterbox(load_image(path), image_size) for _, path in chunk]
        pixels = normalize(torch.stack([b for b, _ in boxed]), mean, std)
        yield [image_id for image_id, _ in chunk], pixels, [s for _, s in boxed]


def _count(source: Path) -> int | None:
    import numpy as np

    if source.suffix.lower() == ".npy" and source.is_file():
        return int(np.load(source, mmap_mode="r").shape[0])
    if source.is_dir():
        from declip.data.images import list_images

        return len(list_images({"root": str(source.resolve())}))
    return 1


def run(args, cfg: dict) -> dict:
    import math

    import numpy as np
    import torch
    from tqdm import tqdm

    from declip.models.clip import load_clip
    from declip.models.dense import dense_model

    method = dict(cfg.get("method", {}))
    mode = args.mode or method.get("dense_mode", "qq")
    # context_proj `auto` (the default) follows the mode: --mode kk returns K, --mode csa Q||K.
    method.update({k: v for k, v in (("attn_scale", args.attn_scale), ("context_proj", args.context_proj)) if v})
    student = _student_cfg(cfg, args.model, args.checkpoint)
    image_size = args.image_size or student["image_size"]
    if args.batch_size < 1:
        raise UserFacingError("--batch-size must be at least 1")
    from declip.device import pick_device

    device = pick_device(args.device)

    clip = load_clip(student, checkpoint=args.checkpoint, checkpoint_format=args.checkpoint_format)
    dense = dense_model(clip, method, mode).to(device).eval()
    if image_size % dense.patch_size:
        raise UserFacingError(f"--image-size {image_size} is not a multiple of the patch size {dense.patch_size}")
    use_bf16 = args.precision == "bf16" or (
        args.precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())

    source = Path(args.input)
    total = _count(source)
    ids, scales, contents, contexts = [], [], [], []
    start = time.time()
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
        batches = _batches(source, image_size, args.batch_size, student["mean"], student["std"])
        bar = tqdm(batches, total=math.ceil(total / args.batch_size) if total else None, desc="features", unit="batch")
        for batch_ids, pixels, batch_scales in bar:
            if pixels.shape[-1] % dense.patch_size or pixels.shape[-2] % dense.patch_size:
                raise UserFacingError(f"input size {tuple(pixels.shape[-2:])} is not a multiple of the patch size "
                                      f"{dense.patch_size}; pad or resize the .npy array")
            out = dense(pixels.to(device))
            contents.append(out.content.float().cpu().numpy())
            n_tokens = out.content.shape[-2] * out.content.shape[-1]
            ctx = out.context.float().cpu().numpy() if out.context is not None else \
                np.zeros((len(batch_ids), n_tokens, 0), dtype=np.float32)
            contexts.append(ctx)
            ids += batch_ids
            scales += batch_scales
    seconds = time.time() - start
    if not ids:
        raise UserFacingError(f"--input {source} holds no images")
    content = np.concatenate(contents)
    grid = np.array(content.shape[-2:], dtype=np.int64)

    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, content=content, context=np.concatenate(contexts), image_ids=np.array(ids),
                 scales=np.array(scales, dtype=np.float32), grid=grid, mode=np.array(mode))
    tmp.replace(out_path)
    log.info("features: %d images in %.1f s (%.2f images/s), mode %s, grid %s -> %s",
             len(ids), seconds, len(ids) / max(seconds, 1e-9), mode, tuple(grid), out_path)
    return {"metrics": {"images": len(ids), "seconds": seconds, "images_per_second": len(ids) / max(seconds, 1e-9)},
            "artifacts": [str(out_path)]}
