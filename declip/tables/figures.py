"""Figures of one variant: patch-affinity maps (as the paper's attention figures) and a segmentation example.

Affinity of a query token = cosine similarity of its feature to every token of the same image
(paper Fig. 1/3: "attention"/similarity maps of CLIP vs DeCLIP vs the VFM). Panels, side by side over
the image: the original CLIP's dense map (vanilla forward), the variant's dense map X_content, the
variant's context tokens X_context (decoupled modes only) and the VFM teacher's tokens from the
teacher cache. All maps live on the student's token grid of the letterboxed image, so one query
token means the same image cell in every panel.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from declip.config import dataset_spec
from declip.errors import UserFacingError

log = logging.getLogger(__name__)

DEFAULT_POINTS = ((0.3, 0.3), (0.5, 0.5), (0.7, 0.7))  # (x, y) fractions of the image, used without annotations
IGNORE_INDEX = 255


@dataclass
class Panel:
    title: str
    tokens: object  # (h, w, D) float tensor on the student grid


# ---------------------------------------------------------------- pure helpers (numpy / torch)

def token_affinity(tokens, row: int, col: int):
    """(h, w) cosine similarity of token (row, col) to every token: the paper's similarity map."""
    import torch.nn.functional as F

    t = F.normalize(tokens.float(), dim=-1)
    return (t @ t[row, col]).cpu().numpy()


def upsample_map(amap, size: int, content_hw: tuple[int, int]):
    """Token map -> pixels of the letterboxed image (bilinear), cropped to the image content (no padding)."""
    import torch
    import torch.nn.functional as F

    x = torch.as_tensor(amap, dtype=torch.float32)[None, None]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)[0, 0]
    return x[: content_hw[0], : content_hw[1]].numpy()


def minmax(a):
    """Rescale to [0, 1]: maps from different feature spaces have different cosine ranges, as in the paper's figures."""
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else a * 0.0


def palette(n: int):
    """(n, 3) uint8 colours, distinct for small n (tab20), then evenly spaced hues."""
    import colorsys

    import matplotlib
    import numpy as np

    if n <= 20:
        cols = matplotlib.colormaps["tab20"](np.arange(n))[:, :3]
    else:
        cols = np.array([colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.65 + 0.35 * (i % 2), 0.95) for i in range(n)])
    return (np.asarray(cols) * 255).round().astype(np.uint8)


def colorize(labels, colours, ignore_index: int = IGNORE_INDEX):
    """(H, W) class indices -> (H, W, 3) uint8; ignored (and unknown) pixels black."""
    import numpy as np

    out = np.zeros((*labels.shape, 3), dtype=np.uint8)
    valid = (labels != ignore_index) & (labels >= 0) & (labels < len(colours))
    out[valid] = colours[labels[valid]]
    return out


def points_from_masks(masks: list, max_points: int = 3) -> list[tuple[int, int]]:
    """One (y, x) query per mask: its most interior pixel (largest distance to the mask border), so the
    query lies inside the segment even for rings or segments wrapped around others."""
    import numpy as np
    from scipy.ndimage import distance_transform_edt

    points = []
    for m in masks[:max_points]:
        if not m.any():
            continue
        # Pad so that the image border counts as the mask border.
        depth = distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]
        y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
        points.append((int(y), int(x)))
    return points


# ---------------------------------------------------------------- drawing

def draw_affinity(image, panels: list[Panel], points: list[tuple[int, int]], patch: int, size: int,
                  content_hw: tuple[int, int], path: Path, title: str) -> Path:
    """Rows = query points, columns = image + one affinity map per panel; query marked with a star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 1 + len(panels)
    fig, axes = plt.subplots(len(points), cols, figsize=(2.2 * cols, 2.2 * len(points)), squeeze=False)
    for r, (y, x) in enumerate(points):
        row, col = min(y // patch, size // patch - 1), min(x // patch, size // patch - 1)
        axes[r, 0].imshow(image)
        axes[r, 0].set_title("image" if r == 0 else "", fontsize=8)
        for c, panel in enumerate(panels, start=1):
            amap = minmax(upsample_map(token_affinity(panel.tokens, row, col), size, content_hw))
            axes[r, c].imshow(image)
            axes[r, c].imshow(amap, cmap="jet", alpha=0.55, vmin=0.0, vmax=1.0)
            if r == 0:
                axes[r, c].set_title(panel.title, fontsize=8)
        for ax in axes[r]:
            ax.plot([x], [y], marker="*", markersize=10, color="white", markeredgecolor="black")
            ax.set_axis_off()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def draw_segmentation(image, gt, pred, names: list[str], path: Path, title: str,
                      ignore_index: int = IGNORE_INDEX) -> Path:
    """Image | ground truth | prediction, one colour per class, legend of the classes shown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Patch

    colours = palette(len(names))
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.4))
    for ax, (label, img) in zip(axes, (("image", image), ("ground truth", colorize(gt, colours, ignore_index)),
                                       ("prediction", colorize(pred, colours, ignore_index)))):
        ax.imshow(img)
        ax.set_title(label, fontsize=9)
        ax.set_axis_off()
    shown = sorted(set(np.unique(gt).tolist()) | set(np.unique(pred).tolist()))
    shown = [k for k in shown if 0 <= k < len(names)]
    handles = [Patch(color=colours[k] / 255.0, label=names[k]) for k in shown]
    fig.legend(handles=handles, loc="lower center", ncol=min(6, max(1, len(handles))), fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------- orchestration

def _panoptic(spec: dict):
    """The dataset's panoptic annotations (COCO format), or None when it has none."""
    from declip.data.panoptic import panoptic_paths, read_panoptic

    json_path, png_dir, images_dir = panoptic_paths(spec)
    return read_panoptic(json_path, png_dir, images_dir) if json_path.exists() else None


def _semantic_gt(pimage, label_of: dict[int, int]):
    """(H, W) contiguous class index per pixel from panoptic segments; unlabeled pixels IGNORE_INDEX."""
    import numpy as np

    from declip.data.panoptic import load_segment_ids

    ids = load_segment_ids(pimage.png_path)
    gt = np.full(ids.shape, IGNORE_INDEX, dtype=np.int64)
    for seg in pimage.segments:
        gt[ids == seg.id] = label_of[seg.category_id]
    return gt, ids


def _query_masks(pimage, ids) -> list:
    """The two largest thing segments and the largest stuff segment: objects and background, as in the paper."""
    things = sorted((s for s in pimage.segments if s.isthing), key=lambda s: -s.area)[:2]
    stuff = sorted((s for s in pimage.segments if not s.isthing), key=lambda s: -s.area)[:1]
    return [ids == s.id for s in things + stuff]


def _display(img01):
    return img01.permute(1, 2, 0).clamp(0, 1).cpu().numpy()


def make_figures(cfg: dict, variant: str, checkpoint: str | None, dataset: str, teachers_index: str | Path,
                 out_dir: str | Path, data_root: str | Path | None = None, num_images: int = 2,
                 points: list[tuple[float, float]] | None = None, device: str = "auto") -> list[Path]:
    """Affinity figure per image (and one segmentation example per image when panoptic GT exists)."""
    import torch
    from tqdm import tqdm

    from declip.data.images import letterbox, list_images, load_image, normalize
    from declip.distill.cache import TeacherCache
    from declip.device import pick_device
    from declip.evaluate.text import family_attn_scale, family_dense_mode, load_eval_model
    from declip.evaluate.tfseg import benchmark_settings, predict

    spec = dataset_spec(cfg, dataset, data_root)
    out_dir = Path(out_dir)
    cache = TeacherCache(teachers_index)
    if cache.kind != "tokens":
        raise UserFacingError(f"{teachers_index} holds {cache.kind}, not VFM tokens: pass a vfm:<name> teacher index")
    cached = cache.index.get("dataset")
    if cached is not None and cached != dataset:  # image ids (file stems) repeat across splits
        raise UserFacingError(f"the teacher cache {teachers_index} was extracted for dataset {cached!r}, not "
                              f"{dataset!r}: pass that dataset's cache (cache/teachers/{dataset}/...)")
    items = [(i, p) for i, p in list_images(spec) if i in cache][:num_images]
    if not items:
        raise UserFacingError(f"no image of {dataset} is in the teacher cache {teachers_index}: "
                              "extract the cache for this dataset (declip teachers --dataset ...)")
    dev = pick_device(device)
    method, student = cfg["method"], cfg["student"]
    original = load_eval_model(cfg, "clip", None, dev, "vanilla")
    model = load_eval_model(cfg, variant, checkpoint, dev, method["dense_mode"])
    pano = _panoptic(spec)
    by_stem = {im.image_path.stem: im for im in pano.images} if pano else {}
    size = int(student["image_size"])
    vfm_name = cache.teacher.removeprefix("vfm:")

    seg = None
    if pano is not None:
        seg_mode = family_dense_mode(dict(cfg, method=method), "tfseg")
        seg_scale = family_attn_scale(dict(cfg, method=method), "tfseg")
        seg_model = model if (seg_mode, seg_scale) == (method["dense_mode"], method["attn_scale"]) else \
            load_eval_model(cfg, variant, checkpoint, dev, seg_mode, seg_scale)
        text, owner = seg_model.text(pano.names, "imagenet")
        seg = (seg_model, text, owner, benchmark_settings(cfg, dataset))
    else:
        log.warning("%s has no panoptic annotations: fixed query points and no segmentation example", dataset)

    written: list[Path] = []
    for image_id, path in tqdm(items, desc=f"figures {variant}", unit="img"):
        img01 = load_image(path)
        boxed, scale = letterbox(img01, size)
        content = (max(1, round(img01.shape[1] * scale)), max(1, round(img01.shape[2] * scale)))
        x = normalize(boxed, student["mean"], student["std"])[None].to(dev)
        with torch.no_grad():
            ref = original.dense(x)
            out = model.dense(x)
        h, w = out.content.shape[-2:]
        if tuple(cache.grid) != (h, w):
            raise UserFacingError(f"teacher cache grid {cache.grid} differs from the student grid {(h, w)} at "
                                  f"student.image_size {size}: re-extract the cache with this config")
        panels = [Panel("CLIP (original)", ref.content[0].permute(1, 2, 0)),
                  Panel(f"{variant}: dense map", out.content[0].permute(1, 2, 0))]
        if out.context is not None:
            panels.append(Panel(f"{variant}: context", out.context[0].reshape(h, w, -1)))
        panels.append(Panel(f"VFM {vfm_name}", cache.get([image_id])[0].to(dev)))

        pim = by_stem.get(Path(path).stem)
        gt, ids = _semantic_gt(pim, pano.label_of) if pim is not None else (None, None)
        pts = [(int(y * scale), int(x_ * scale)) for y, x_ in points_from_masks(_query_masks(pim, ids))] \
            if pim is not None and not points else []
        if not pts:  # given points, or no annotated segment to query
            pts = [(int(fy * content[0]), int(fx * content[1])) for fx, fy in (points or DEFAULT_POINTS)]
        pts = [(min(y, content[0] - 1), min(x_, content[1] - 1)) for y, x_ in pts]
        safe = str(image_id).replace("/", "_")
        written.append(draw_affinity(_display(boxed[:, : content[0], : content[1]]), panels, pts, original.dense.patch_size,
                                     size, content, out_dir / f"affinity_{safe}.png",
                                     f"{variant}: cosine similarity of the starred token to all tokens (image {image_id})"))
        if seg is not None and pim is not None:
            seg_model, text, owner, settings = seg
            pred = predict(seg_model, img01, text, owner, len(pano.names), settings, student["mean"], student["std"]).numpy()
            written.append(draw_segmentation(_display(img01), gt, pred, pano.names, out_dir / f"segmentation_{safe}.png",
                                             f"{variant}: training-free segmentation (argmax), image {image_id}"))
    log.info("figures %s: %d files in %s", variant, len(written), out_dir)
    return written
