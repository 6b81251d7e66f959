"""Patch-affinity ROC AUC (declip.metrics.affinity) of a teacher or of the student CLIP on held-out images.

Sources: `vfm:<name>` (cosine similarity of its tokens on the CLIP grid, as the context loss sees them),
`sd` (the row-stochastic SD self-attention affinity, symmetrised A + A^T), `clip:<dense mode>` (cosine
similarity of the original CLIP's context tokens in that mode, or of its dense map for `vanilla`/`value`).
"""

from __future__ import annotations

import logging

from declip.config import dataset_spec
from declip.errors import UserFacingError

log = logging.getLogger(__name__)


def _cosine(tokens):
    import torch.nn.functional as F

    t = F.normalize(tokens.reshape(tokens.shape[0], -1, tokens.shape[-1]).float(), dim=-1)
    return t @ t.transpose(1, 2)


def similarity_fn(cfg: dict, source: str, device):
    """A function [0,1] image batch -> (B, N, N) similarity on the CLIP grid, for one source."""
    import torch

    from declip.distill.cache import OnlineTeacher
    if source == "sd" or source.startswith("vfm:"):
        teacher = OnlineTeacher(cfg, source, device=str(device))
        if teacher.kind == "affinity":
            return lambda x: (lambda a: a + a.transpose(1, 2))(teacher.get(x))
        return lambda x: _cosine(teacher.get(x))
    if source.startswith("clip:"):
        from declip.data.images import letterbox, normalize
        from declip.evaluate.text import load_eval_model

        mode = source.removeprefix("clip:")
        model = load_eval_model(cfg, "clip", None, device, mode)
        student = cfg["student"]

        def clip_sim(images):
            x = torch.stack([letterbox(img, int(student["image_size"]))[0] for img in images])
            with torch.no_grad():
                out = model.dense(normalize(x, student["mean"], student["std"]).to(device))
            return _cosine(out.context if out.context is not None else out.content.permute(0, 2, 3, 1))

        return clip_sim
    raise UserFacingError(f"unknown affinity source {source!r}: use vfm:<name>, sd or clip:<dense mode>")


def affinity_auc(cfg: dict, source: str, device="cpu", batch_size: int = 16) -> dict:
    """{"auc", "n_pos", "n_neg", "n_images", "source", "dataset"} on mini.teachers.quality.dataset."""
    import numpy as np
    import torch

    from declip.data.images import load_image
    from declip.data.panoptic import load_segment_ids, panoptic_paths, read_panoptic
    from declip.distill.cache import student_grid
    from declip.metrics.affinity import pair_scores, roc_auc, row_entropy, token_segments

    qc = cfg["mini"]["teachers"]["quality"]
    spec = dataset_spec(cfg, qc["dataset"])
    pano = read_panoptic(*panoptic_paths(spec))
    if not pano.images:
        raise UserFacingError(f"{qc['dataset']} has no panoptic images for the affinity figure")
    size = int(cfg["student"]["image_size"])
    patch = size // student_grid(cfg["student"])[0]
    sim_of = similarity_fn(cfg, source, torch.device(device))
    pos, neg, entropies = [], [], []
    for start in range(0, len(pano.images), batch_size):
        chunk = pano.images[start:start + batch_size]
        sims = sim_of([load_image(im.image_path) for im in chunk]).cpu().numpy()
        for im, sim in zip(chunk, sims):
            labels = token_segments(load_segment_ids(im.png_path), size, patch, float(qc["purity"]))
            p, n = pair_scores(sim, labels)
            pos.append(p)
            neg.append(n)
            if source == "sd":
                entropies.append(row_entropy(sim))
    pos, neg = np.concatenate(pos), np.concatenate(neg)
    auc = roc_auc(pos, neg)
    log.info("patch-affinity ROC AUC of %s on %s: %.3f (%d same / %d different-segment pairs)", source, qc["dataset"], auc, len(pos), len(neg))
    out = {"source": source, "dataset": qc["dataset"], "auc": auc, "n_pos": int(len(pos)), "n_neg": int(len(neg)),
           "n_images": len(pano.images)}
    if entropies:  # SD: how far its attention is from uniform (near 1 = no structure, the AUC then ranks noise)
        out["row_entropy"] = float(np.mean(entropies))
    return out
