"""Open-vocabulary video instance segmentation, feature protocol (protocols.md section 6; host CLIP-VIS).

CLIP-VIS (zwq456/CLIP-VIS clipvis/clipvis_video.py, inference branch of `forward`) classifies each track
from the dense CLIP map of every frame: mask pooling inside the track's mask of that frame, logits =
min(exp(logit_scale), 100) * cos(pooled, class text) with the max over a class's synonyms
(`get_classification_logits`), softmax over the vocabulary per frame, then
    score(track, class) = sqrt( mean_t sqrt(p_t(class) * maskIoU_t) * objectness )
and keeps the top-scoring (track, class) pairs. Here, per track:
- the dense map is the variant's DenseCLIP content map of the letterboxed frame (tokens L2-normalised,
  as in every family), pooled with area weights inside the mask (`declip.evaluate.ov3d.mask_pool`);
- the mean runs over the frames where the track has a mask (a null frame has nothing to pool; CLIP-VIS's
  predicted masks exist in every frame);
- maskIoU_t = 1 and objectness = the track's `score` (1 for oracle tracks, protocols.md section 6);
  a proposals file may carry per-frame `mask_ious` (CLIP-VIS's predicted mask IoU);
- the `top_k` classes of each track become results (protocols.md: top-10 per track), each with the
  track's segmentations.
Text: CLIP-VIS's 14 prompts (`CLIPVIS_TEMPLATES`), ensembled per class name.
Track sources (`--tracks`): `oracle` (GT masks: the backbone alone) or a key of the dataset's `proposals`
(class-agnostic tracks in the results format). Results are written as results.json next to metrics.json and
scored from that file by `declip.metrics.ytvis` when the GT is public (LV-VIS val, the mini world); for
YouTube-VIS and OVIS val the results are the file to submit to their evaluation servers.
"""

from __future__ import annotations

import json
import logging
import time
import zipfile
from pathlib import Path

import numpy as np

from declip.config import dataset_spec, resolve_path
from declip.data import ytvis as data
from declip.errors import UserFacingError
from declip.metrics import ytvis as metric

log = logging.getLogger(__name__)
HEADLINE = metric.HEADLINE + ("AP_base", "AP_novel")


def track_class_scores(probs, mask_ious, objectness: float):
    """(K,) CLIP-VIS score per class from per-frame class probabilities (F, K) and mask IoUs (F,)."""
    import torch

    per_frame = torch.sqrt(probs * mask_ious[:, None])
    return torch.sqrt(per_frame.mean(0) * objectness)


def frame_probabilities(pooled, text, owner, num_classes: int, logit_scale: float):
    """(F, K) softmax over the vocabulary of pooled frame features (F, C) (CLIP-VIS get_classification_logits)."""
    import torch.nn.functional as F

    from declip.evaluate.text import max_over_synonyms

    logits = logit_scale * F.normalize(pooled, dim=-1) @ text.T
    return max_over_synonyms(logits, owner, num_classes).softmax(-1)


def clip_logit_scale(clip) -> float:
    """min(exp(logit_scale), 100), as CLIP-VIS / FC-CLIP clamp it."""
    return float(min(float(clip.logit_scale.exp()), 100.0))


def classify_video(model, vs: data.VideoSet, video: dict, tracks: list[dict], text, owner, student: dict,
                   logit_scale: float, top_k: int) -> list[dict]:
    """Results entries for the tracks of one video."""
    import torch

    from declip.data.images import load_image
    from declip.evaluate.ov3d import _dense_maps, mask_pool

    h, w = video["height"], video["width"]
    masks = [[data.decode(s, h, w) for s in t["segmentations"]] for t in tracks]
    needed = sorted({f for ms in masks for f, m in enumerate(ms) if m is not None and f < len(video["file_names"])})
    maps = _dense_maps(model, {f: load_image(vs.frame_path(video, f)) for f in needed}, student)
    out = []
    for t, ms in zip(tracks, masks):
        pooled, ious = [], []
        frame_ious = t.get("mask_ious") or [1.0] * len(ms)
        for f, m in enumerate(ms):
            if m is None or f not in maps:
                continue
            p = mask_pool(maps[f], m, student["image_size"])
            if p is not None:
                pooled.append(p)
                ious.append(float(frame_ious[f]))
        if not pooled:
            continue  # nothing of the track is visible: no feature, no result
        probs = frame_probabilities(torch.stack(pooled), text, owner, len(vs.categories), logit_scale)
        scores = track_class_scores(probs, torch.tensor(ious), float(t.get("score", 1.0)))
        top = torch.topk(scores, min(top_k, len(scores)))
        for s, k in zip(top.values.tolist(), top.indices.tolist()):
            out.append({"video_id": video["id"], "category_id": vs.categories[k]["id"], "score": round(s, 6),
                        "segmentations": t["segmentations"]})
    return out


def write_results(path: Path, results: list[dict], zip_it: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results))
    tmp.replace(path)
    if zip_it:  # the servers take a zip holding results.json
        with zipfile.ZipFile(path.with_suffix(".zip"), "w", zipfile.ZIP_DEFLATED) as z:
            z.write(path, "results.json")
    return path


def main(args, cfg) -> dict:
    """`declip evaluate ovvis --variant V --benchmark B --tracks S --out metrics.json`."""
    from tqdm import tqdm

    from declip.device import pick_device
    from declip.evaluate import write_metrics
    from declip.evaluate.templates import CLIPVIS_TEMPLATES
    from declip.evaluate.text import family_dense_mode, load_eval_model

    t0 = time.time()
    ocfg, student = cfg["evaluate"]["ovvis"], cfg["student"]
    benchmarks = ocfg["benchmarks"]
    benchmark = args.benchmark or (benchmarks[0] if len(benchmarks) == 1 else None)
    if benchmark is None:
        raise UserFacingError(f"several benchmarks are configured; choose one with --benchmark ({', '.join(benchmarks)})")
    spec = dataset_spec(cfg, benchmark, args.data)
    spec["root"] = str(resolve_path(spec["root"]))
    vs = data.load_video_set(benchmark, spec)
    tracks = data.load_tracks(vs, args.tracks, spec)
    by_video: dict = {}
    for t in tracks:
        by_video.setdefault(t["video_id"], []).append(t)
    model = load_eval_model(cfg, args.variant, args.checkpoint, pick_device(args.device), family_dense_mode(cfg, "ovvis"))
    text, owner = model.text(vs.class_names, CLIPVIS_TEMPLATES)
    text = text.float().cpu()  # the dense maps come back on the CPU
    scale = clip_logit_scale(model.clip)
    results = []
    for vid in tqdm(sorted(by_video), desc=f"ovvis {benchmark}/{args.tracks}", unit="video"):
        results += classify_video(model, vs, vs.videos[vid], by_video[vid], text, owner, student, scale, ocfg["top_k"])
    out_path = Path(args.out)
    res_path = write_results(out_path.parent / "results.json", results, zip_it=not vs.gt_public)
    payload: dict = {k: None for k in HEADLINE}
    if vs.gt_public:
        scores = metric.score_files(Path(spec["root"]) / spec.get("annotations", "valid.json"), res_path)
        payload.update(scores)
    else:
        payload["note"] = (f"{benchmark}: ground truth is not public; submit {res_path.with_suffix('.zip')} to the "
                           "benchmark's evaluation server (see the dataset's instructions)")
    payload.update(benchmark=benchmark, tracks=args.tracks, variant=args.variant, n_videos=len(by_video),
                   n_tracks=len(tracks), n_results=len(results), logit_scale=round(scale, 4),
                   seconds=round(time.time() - t0, 2))
    write_metrics(out_path, payload)
    log.info("ovvis %s/%s %s: AP %s AP50 %s (base %s, novel %s) on %d videos, %d tracks, %.1fs", benchmark,
             args.tracks, args.variant, payload["AP"], payload["AP50"], payload.get("AP_base"),
             payload.get("AP_novel"), len(by_video), len(tracks), payload["seconds"])
    return {"artifacts": [str(out_path), str(res_path)]}
