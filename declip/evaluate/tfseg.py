"""Training-free open-vocabulary semantic segmentation (protocols.md section 2; SCLIP/ClearCLIP recipe).

Per image: shorter side resized to the benchmark's short_side (mmseg Resize, long side capped at 2048);
sliding windows window x window with stride (mmseg slide inference), ALL windows in one batched forward
of the dense model; per window L2-normalised tokens . query text embeddings (80 ImageNet templates, one
query per synonym), bilinear upsampling to the window, averaging of overlapping windows; bilinear resize
to the original size; softmax(logit_scale * logits) over the queries, per class the max over its
synonyms (SCLIP postprocess); argmax; on benchmarks with background, pixels whose max probability is
below prob_thd become class 0. Scored with a dataset-level confusion matrix (declip.metrics.semseg).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from declip.config import dataset_spec
from declip.data.semseg import has_background
from declip.errors import UserFacingError

log = logging.getLogger(__name__)

# mmseg `Resize(scale=(2048, short_side), keep_ratio=True)`: the long side never exceeds 2048.
MAX_LONG_SIDE = 2048


def resized_shape(h: int, w: int, short_side: int, max_long: int = MAX_LONG_SIDE) -> tuple[int, int]:
    """mmcv rescale_size: factor min(max_long/long, short/short), sizes rounded half up."""
    scale = min(max_long / max(h, w), short_side / min(h, w))
    return int(h * scale + 0.5), int(w * scale + 0.5)


def window_boxes(h: int, w: int, window: int, stride: int) -> list[tuple[int, int, int, int]]:
    """(y1, y2, x1, x2) of mmseg slide inference: a grid of windows, the last one flush with the border."""
    rows = max(h - window + stride - 1, 0) // stride + 1
    cols = max(w - window + stride - 1, 0) // stride + 1
    boxes = []
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * stride + window, h), min(c * stride + window, w)
            boxes.append((max(y2 - window, 0), y2, max(x2 - window, 0), x2))
    return boxes


def window_logits(dense, windows, text):
    """(n, Q, H, W): cosine of L2-normalised tokens with each query, bilinearly upsampled to the window.

    Windows whose side is not a multiple of the patch are zero-padded right/bottom (after normalisation)
    and the logits cropped back."""
    import torch.nn.functional as F

    n, _, h, w = windows.shape
    p = dense.patch_size
    ph, pw = -h % p, -w % p
    x = F.pad(windows, (0, pw, 0, ph)) if ph or pw else windows
    tokens = F.normalize(dense(x).content.float(), dim=1)  # (n, C, h/p, w/p)
    logits = (tokens.permute(0, 2, 3, 1) @ text.T).permute(0, 3, 1, 2)
    logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return logits[..., :h, :w]


def slide_logits(dense, image, text, window: int, stride: int):
    """(Q, H, W) window-averaged query logits for one normalised image (1, 3, H, W), one forward."""
    import torch

    _, _, h, w = image.shape
    boxes = window_boxes(h, w, window, stride)
    windows = torch.cat([image[..., y1:y2, x1:x2] for y1, y2, x1, x2 in boxes])
    logits = window_logits(dense, windows, text)
    total = logits.new_zeros(logits.shape[1], h, w)
    count = logits.new_zeros(1, h, w)
    for (y1, y2, x1, x2), lg in zip(boxes, logits):
        total[:, y1:y2, x1:x2] += lg
        count[:, y1:y2, x1:x2] += 1
    return total / count


def predict(model, img01, text, owner, num_classes: int, settings: dict, mean, std):
    """(H, W) int64 class map at the image's original size."""
    import torch
    import torch.nn.functional as F

    from declip.data.images import normalize
    from declip.evaluate.text import max_over_synonyms

    h0, w0 = img01.shape[-2:]
    h, w = resized_shape(h0, w0, settings["short_side"])
    x = img01[None].to(model.device)
    if (h, w) != (h0, w0):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    with torch.no_grad():
        logits = slide_logits(model.dense, normalize(x, mean, std), text, settings["window"], settings["stride"])
        logits = F.interpolate(logits[None], size=(h0, w0), mode="bilinear", align_corners=False)[0]
        probs = max_over_synonyms((settings["logit_scale"] * logits).softmax(0), owner, num_classes, dim=0)
        conf, pred = probs.max(0)
        if settings["background"]:
            pred[conf < settings["prob_thd"]] = 0
    return pred.cpu()


def benchmark_settings(cfg: dict, benchmark: str) -> dict:
    """evaluate.tfseg defaults overridden by the benchmark's entry in `datasets`."""
    base = cfg["evaluate"]["tfseg"]
    spec = cfg["datasets"][benchmark]
    s = {k: base[k] for k in ("window", "stride", "short_side", "logit_scale", "prob_thd")}
    s.update({k: spec[k] for k in ("short_side", "logit_scale", "prob_thd") if k in spec})
    s["background"] = has_background(benchmark, spec)
    s["reduce_zero_label"] = bool(spec.get("reduce_zero_label", False))
    return s


def evaluate(model, benchmark: str, spec: dict, settings: dict, student_cfg: dict, save_pred=None,
             progress=True) -> dict:
    """Predict and score every image of a benchmark; returns the metrics.json payload."""
    import numpy as np
    from tqdm import tqdm

    from declip.data.images import load_image
    from declip.data.semseg import class_names, class_prompts, list_samples, read_index_png
    from declip.metrics.semseg import ConfusionMatrix, report

    samples = list_samples(spec)
    prompts = class_prompts(benchmark, spec)
    text, owner = model.text(prompts, "imagenet")
    cm = ConfusionMatrix(len(prompts), 255, settings["reduce_zero_label"])
    if save_pred:
        save_pred = Path(save_pred)
        save_pred.mkdir(parents=True, exist_ok=True)
    start = time.time()
    for s in tqdm(samples, desc=f"tfseg {benchmark}", disable=not progress):
        pred = predict(model, load_image(s.image_path), text, owner, len(prompts), settings,
                       student_cfg["mean"], student_cfg["std"]).numpy()
        cm.update(pred, read_index_png(s.gt_path))
        if save_pred:
            from PIL import Image

            Image.fromarray(pred.astype(np.uint8)).save(save_pred / s.gt_path.name)
    seconds = time.time() - start
    log.info("tfseg %s: %d images in %.1f s (%.2f images/s)", benchmark, len(samples), seconds,
             len(samples) / max(seconds, 1e-9))
    out = report(cm, class_names(benchmark, spec))
    out["n_images"] = len(samples)
    return out


def main(args, cfg: dict) -> dict:
    """`declip evaluate tfseg`: metrics.json for one variant on one benchmark."""
    from declip.device import pick_device
    from declip.evaluate import write_metrics
    from declip.evaluate.text import eval_options, family_attn_scale, family_dense_mode, load_eval_model

    benchmarks = cfg["evaluate"]["tfseg"]["benchmarks"]
    benchmark = args.benchmark or (benchmarks[0] if len(benchmarks) == 1 else None)
    if benchmark is None:
        raise UserFacingError(
            f"several benchmarks are configured; choose one with --benchmark ({', '.join(benchmarks)})")
    spec = dataset_spec(cfg, benchmark, args.data)
    settings = benchmark_settings(cfg, benchmark)
    model = load_eval_model(cfg, args.variant, args.checkpoint, pick_device(args.device),
                            family_dense_mode(cfg, "tfseg"),
                            family_attn_scale(cfg, "tfseg"))
    metrics = evaluate(model, benchmark, spec, settings, cfg["student"], save_pred=args.save_pred)
    metrics["options"] = eval_options(cfg, args.variant, model)
    metrics["options"].pop("token_norm")  # no pooling here: segmentation always scores L2-normalised tokens
    out = write_metrics(args.out, metrics)
    return {"artifacts": [str(out)]}  # metrics.json is a rule output: the tracking layer logs its numbers
