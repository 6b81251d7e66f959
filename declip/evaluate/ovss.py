"""Open-vocabulary semantic segmentation with a trained head (protocols.md section 4; host CAT-Seg).

The variant's CLIP (its dense map in the family's dense mode) feeds a cost-aggregation head
(`declip.models.catseg`); `declip evaluate ovss-train` trains head + CLIP attention (declip.evaluate.ovss_train),
this module loads the result and scores it on a benchmark with `declip score semseg` semantics.

Inference (CAT-Seg github KU-CVLAB/CAT-Seg, cat_seg_model.py l.187-224, run for every benchmark by
eval.sh with TEST.SLIDING_WINDOW True and POOLING_SIZES [1,1]): the image is resized to out_res x out_res,
cut into kernel x kernel windows with overlap 0.333 (nn.Unfold), plus one global view of the whole image
resized to kernel; every view is resized to the CLIP resolution and goes through CLIP + head in one
batch; the sigmoid scores are upsampled to the kernel, the windows averaged (nn.Fold / count) and averaged
with the upsampled global view; the result is resized to the original image and argmax gives the class.
`whole` (OUR simplification of the non-sliding path) runs the single global view.

Text: per class, one embedding per prompt template from the (fine-tuned) text tower, L2-normalised,
first synonym only (cat_seg_predictor.py l.187-219: `classname.split(', ')[0]`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

from declip.config import dataset_spec, resolve_path
from declip.errors import UserFacingError

log = logging.getLogger(__name__)

# CAT-Seg's ViT-B/16 prompt (cat_seg_predictor.py l.84-85, PROMPT_ENSEMBLE_TYPE "single" in vitb_384.yaml).
SINGLE_TEMPLATE = ("A photo of a {} in the scene",)


def templates(name: str) -> tuple[str, ...]:
    from declip.evaluate.templates import TEMPLATE_SETS

    return SINGLE_TEMPLATE if name == "single" else tuple(TEMPLATE_SETS[name])


# ------------------------------------------------------------------------------------------ vocabulary

def class_prompts(cfg: dict, benchmark: str, spec: dict) -> list[str]:
    """The benchmark's classes: `evaluate.ovss.class_json[benchmark]` (a JSON list, CAT-Seg's datasets/*.json
    format, ', ' between synonyms) when set, else the suite's class list ('; ' between synonyms)."""
    from declip.data.semseg import class_prompts as suite_prompts

    path = cfg["evaluate"]["ovss"].get("class_json", {}).get(benchmark)
    if not path:
        return suite_prompts(benchmark, spec)
    p = resolve_path(path)
    if not p.is_file():
        raise UserFacingError(f"class list {p} (evaluate.ovss.class_json.{benchmark}) not found: run the "
                              "catseg_classes download, or point the key at CAT-Seg's datasets/*.json")
    names = json.loads(p.read_text())
    return [n.replace(", ", "; ") for n in names]


def first_synonyms(prompts: list[str]) -> list[str]:
    return [p.split("; ")[0].strip() for p in prompts]


def split_vocabulary(names: list[str], unseen: list[str]) -> tuple[list[int], list[int]]:
    """(seen indices, unseen indices) of a class list; every unseen name must be one of the classes."""
    missing = sorted(set(unseen) - set(names))
    if missing:
        raise UserFacingError(f"evaluate.ovss.unseen_classes {missing} are not classes of the training set "
                              f"({', '.join(names)})")
    return [i for i, n in enumerate(names) if n not in unseen], [i for i, n in enumerate(names) if n in unseen]


# ------------------------------------------------------------------------------------------ the model

class OvssModel:
    """CLIP (image + text towers), its DenseCLIP wrapper, the hooks on the guidance layers, and the head."""

    def __init__(self, cfg: dict, clip, tokenize, device, dense_mode: str):
        from declip.models.catseg import CostAggregationHead
        from declip.models.dense import DenseCLIP

        oc = cfg["evaluate"]["ovss"]
        method = cfg.get("method", {})
        self.cfg, self.oc, self.clip, self.tokenize, self.device = cfg, oc, clip, tokenize, device
        self.dense = DenseCLIP(clip, dense_mode=dense_mode, attn_scale=method.get("attn_scale", "none"),
                               context_proj=method.get("context_proj", "q")).to(device)
        tw = self.dense._tower
        n_blocks = len(tw.blocks)
        layers = oc["head"]["guidance_layers"]
        if any(not 0 <= i < n_blocks - 1 for i in layers):
            raise UserFacingError(f"evaluate.ovss.head.guidance_layers {layers} must index blocks 0..{n_blocks - 2} "
                                  f"of the {n_blocks}-block image tower")
        self._taps: list = []
        for i in layers:
            tw.blocks[i].register_forward_hook(lambda _m, _i, out: self._taps.append(out))
        self.templates = templates(oc["templates"])
        res = oc["clip_resolution"]
        if res % self.dense.patch_size:
            raise UserFacingError(f"evaluate.ovss.clip_resolution {res} is not a multiple of the patch size "
                                  f"{self.dense.patch_size}")
        grid = (res // self.dense.patch_size,) * 2
        self.head = CostAggregationHead(self.dense.embed_dim, self.dense.width, len(self.templates), grid,
                                        oc["head"]).to(device)
        self.mean, self.std = cfg["student"]["mean"], cfg["student"]["std"]

    def text(self, names: list[str]):
        """(T, P, C) L2-normalised embeddings of every class x template (through the current text tower)."""
        import torch.nn.functional as F

        prompts = [t.format(n) for n in names for t in self.templates]
        tokens = self.tokenize(prompts).to(self.device)
        emb = F.normalize(self.clip.encode_text(tokens).float(), dim=-1)
        return emb.view(len(names), len(self.templates), -1)

    def logits(self, images01, text, pool=(1, 1)):
        """(B, T, 4h, 4w) head logits of images in [0, 1] (B, 3, H, W), resized to the CLIP resolution."""
        import torch.nn.functional as F

        from declip.data.images import normalize

        res = self.oc["clip_resolution"]
        x = normalize(images01, self.mean, self.std)
        if tuple(x.shape[-2:]) != (res, res):
            x = F.interpolate(x, size=(res, res), mode="bilinear", align_corners=False)
        self._taps.clear()
        dense = self.dense(x).content.float()
        tw = self.dense._tower
        h, w = dense.shape[-2:]
        layers = []
        for out in self._taps:
            t = out if tw.batch_first else out.transpose(0, 1)
            t = t[:, tw.num_prefix:].float()
            layers.append(t.reshape(t.shape[0], h, w, -1).permute(0, 3, 1, 2))
        self._taps.clear()
        return self.head(dense, text, layers, pool)

    def state(self) -> dict:
        return {"head": self.head.state_dict(), "clip": self.clip.state_dict()}


def build_model(cfg: dict, variant: str, checkpoint, device, head_state: dict | None = None) -> OvssModel:
    from declip.evaluate.text import family_dense_mode, resolve_checkpoint
    from declip.models.clip import load_clip, tokenizer

    clip = load_clip(cfg["student"], checkpoint=resolve_checkpoint(cfg, variant, checkpoint)).to(device)
    model = OvssModel(cfg, clip, tokenizer(cfg["student"]), device, family_dense_mode(cfg, "ovss"))
    if head_state is not None:
        model.clip.load_state_dict(head_state["clip"])
        model.head.load_state_dict(head_state["head"])
    return model


# ------------------------------------------------------------------------------------------ inference

def slide_scores(model: OvssModel, img01, text, settings: dict):
    """(T, H, W) CAT-Seg sliding-window sigmoid scores of one image (3, H, W) in [0, 1] at its own size."""
    import torch
    import torch.nn.functional as F

    h0, w0 = img01.shape[-2:]
    x = img01[None].to(model.device)
    if settings["inference"] == "whole":
        out = model.logits(x, text).sigmoid()
        return F.interpolate(out, size=(h0, w0), mode="bilinear", align_corners=False)[0]
    k, res = settings["kernel"], settings["out_res"]
    stride = int(k * (1 - settings["overlap"]))
    big = F.interpolate(x, size=(res, res), mode="bilinear", align_corners=False)
    views = F.unfold(big, kernel_size=k, stride=stride)  # (1, 3*k*k, L)
    n = views.shape[-1]
    views = views[0].T.reshape(n, 3, k, k)
    glob = F.interpolate(x, size=(k, k), mode="bilinear", align_corners=False)
    out = model.logits(torch.cat([views, glob]), text)
    out = F.interpolate(out, size=(k, k), mode="bilinear", align_corners=False).sigmoid()
    t = out.shape[1]
    fold = lambda z: F.fold(z, (res, res), kernel_size=k, stride=stride)  # noqa: E731
    summed = fold(out[:-1].reshape(n, t * k * k).T[None])
    count = fold(F.unfold(torch.ones(1, 1, res, res, device=out.device), kernel_size=k, stride=stride))
    glob_up = F.interpolate(out[-1:], size=(res, res), mode="bilinear", align_corners=False)
    scores = (summed / count + glob_up) / 2
    return F.interpolate(scores, size=(h0, w0), mode="bilinear", align_corners=False)[0]


def to_labels(pred, n_objects: int | None):
    """CAT-Seg's VOC-b evaluator (train_net.py VOCbEvaluator: pred >= 20 -> background): with background
    proxies the first n_objects prompts are GT classes 1..n_objects and every later prompt is class 0."""
    if n_objects is None:
        return pred
    return (pred + 1) * (pred < n_objects)


def benchmark_settings(cfg: dict, benchmark: str) -> dict:
    oc = cfg["evaluate"]["ovss"]
    spec = cfg["datasets"][benchmark]
    s = {k: oc[k] for k in ("inference", "kernel", "out_res", "overlap")}
    s["reduce_zero_label"] = bool(spec.get("reduce_zero_label", False))
    s["ignore_index"] = int(spec.get("ignore_index", 255))
    s["background_proxies"] = oc.get("background_proxies", {}).get(benchmark)
    return s


def subset_miou(per_class: dict, names: list[str]) -> float | None:
    """Mean IoU over the named classes that have a defined IoU (the mIoU's NaN rule); None if none has."""
    vals = [per_class[n] for n in names if per_class.get(n) is not None]
    return sum(vals) / len(vals) if vals else None


def evaluate(model: OvssModel, cfg: dict, benchmark: str, spec: dict, save_pred=None, progress=True) -> dict:
    import numpy as np
    import torch
    from tqdm import tqdm

    from declip.data.images import load_image
    from declip.data.semseg import has_background, list_samples, read_index_png
    from declip.metrics.semseg import ConfusionMatrix, report

    settings = benchmark_settings(cfg, benchmark)
    prompts = class_prompts(cfg, benchmark, spec)
    n_obj = settings["background_proxies"]
    names = first_synonyms(prompts)
    if n_obj is not None:
        names = ["background"] + names[:n_obj]
    elif spec["background"] if "background" in spec else has_background(benchmark, spec):
        names[0] = "background"
    samples = list_samples(spec)
    cm = ConfusionMatrix(len(names), settings["ignore_index"], settings["reduce_zero_label"])
    if save_pred:
        save_pred = Path(save_pred)
        save_pred.mkdir(parents=True, exist_ok=True)
    model.clip.eval(), model.dense.eval(), model.head.eval()
    start = time.time()
    with torch.no_grad():
        text = model.text(first_synonyms(prompts))
        for s in tqdm(samples, desc=f"ovss {benchmark}", disable=not progress):
            scores = slide_scores(model, load_image(s.image_path), text, settings)
            pred = to_labels(scores.argmax(0), n_obj).cpu().numpy()
            cm.update(pred, read_index_png(s.gt_path))
            if save_pred:
                from PIL import Image

                Image.fromarray(pred.astype(np.uint16 if len(names) > 255 else np.uint8)).save(
                    save_pred / f"{Path(s.gt_path).stem}.png")
    seconds = time.time() - start
    log.info("ovss %s: %d images in %.1f s (%.2f images/s)", benchmark, len(samples), seconds,
             len(samples) / max(seconds, 1e-9))
    out = report(cm, names)
    out["n_images"] = len(samples)
    unseen = cfg["evaluate"]["ovss"]["unseen_classes"]
    if unseen:
        seen_names = [n for n in names if n not in unseen]
        out["seen_mIoU"] = subset_miou(out["per_class"], seen_names)
        out["unseen_mIoU"] = subset_miou(out["per_class"], [n for n in names if n in unseen])
        out["unseen_classes"] = [n for n in names if n in unseen]
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}


def main(args, cfg: dict) -> dict:
    """`declip evaluate ovss`: metrics.json for one variant's trained head on one benchmark."""
    import torch

    from declip.device import pick_device
    from declip.evaluate import write_metrics

    oc = cfg["evaluate"]["ovss"]
    benchmark = args.benchmark or (oc["benchmarks"][0] if len(oc["benchmarks"]) == 1 else None)
    if benchmark is None:
        raise UserFacingError(f"several benchmarks are configured; choose one with --benchmark "
                              f"({', '.join(oc['benchmarks'])})")
    head_path = Path(args.head)
    if not head_path.is_file():
        raise UserFacingError(f"trained head {head_path} not found: run `declip evaluate ovss-train` for this variant")
    state = torch.load(head_path, map_location="cpu", weights_only=True)
    device = pick_device(args.device)
    model = build_model(cfg, args.variant, args.checkpoint, device, state)
    metrics = evaluate(model, cfg, benchmark, dataset_spec(cfg, benchmark, args.data), save_pred=args.save_pred)
    out = write_metrics(args.out, metrics)
    return {"artifacts": [str(out)]}
