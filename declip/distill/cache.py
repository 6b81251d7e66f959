"""Teacher cache: VFM tokens and SD affinities extracted once per dataset, read by every variant.

method.md section 4: teacher outputs depend only on the image, so they are extracted once per
dataset x teacher into fp16 shards on the student's token grid. Layout (docs/interfaces.md):
`<dir>/shard-00000.npz ...` + `<dir>/index.json` (written last). Each shard is an uncompressed zip
with ONE MEMBER PER IMAGE (key = position in the shard), so a random training batch reads only its
own images (np.load on an .npz reads members lazily) instead of whole shards.

Storage of the SD affinity (kind "affinity"): dense fp16 (N,N) per image by default (exact). With
`teachers.sd.cache_topk: k` only the k largest entries of each row are kept (fp16 values + int16 key
indices) and `.get` scatters them back and renormalises the rows; the mass dropped per row bounds the
error of S_hat = A_self @ S_VFM (|S_VFM| <= 1, so each entry moves by at most 2x the dropped mass),
and index.json records the minimum and mean retained row mass so the approximation is auditable.

Resumable: every shard is written atomically (temp file + rename) with a fingerprint of what it
holds; a re-run skips shards whose fingerprint matches and recomputes the rest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections import OrderedDict
from pathlib import Path

from declip.config import dataset_spec, resolve_path
from declip.errors import UserFacingError

log = logging.getLogger(__name__)

SHARD_NAME = "shard-{:05d}.npz"
META_KEY = "meta"
OPEN_SHARDS = 8  # LRU of open shard handles (each holds a file descriptor, not the data)


# ---------------------------------------------------------------------------------------------------
# Teachers: names, grid, construction
# ---------------------------------------------------------------------------------------------------

def student_grid(student_cfg: dict) -> tuple[int, int]:
    """Token grid of the student at `student.image_size` (560 // 16 = 35 for B/16), without loading weights."""
    size = int(student_cfg["image_size"])
    patch = _student_patch_size(student_cfg)
    if size % patch:
        raise UserFacingError(f"student.image_size {size} is not a multiple of the patch size {patch}; use a multiple")
    return size // patch, size // patch


def _student_patch_size(student_cfg: dict) -> int:
    custom = student_cfg.get("custom_config")
    if custom:
        vision = custom["vision_cfg"]
    else:
        import open_clip

        model_cfg = open_clip.get_model_config(student_cfg["model"])
        if model_cfg is None:
            raise UserFacingError(f"open_clip has no model config {student_cfg['model']!r} (config key `student.model`)")
        vision = model_cfg["vision_cfg"]
    if vision.get("patch_size"):
        return int(vision["patch_size"])
    # timm trunks (EVA02) name their patch size: eva02_base_patch16_clip_224
    match = re.search(r"patch(\d+)", vision.get("timm_model_name", ""))
    if not match:
        raise UserFacingError(f"cannot tell the patch size of student model {student_cfg['model']!r}; set student.custom_config")
    return int(match.group(1))


def parse_teacher(cfg: dict, teacher: str) -> tuple[str, str | None]:
    """`vfm:<name>` -> ("tokens", name); `sd` -> ("affinity", None)."""
    if teacher == "sd":
        return "affinity", None
    if teacher.startswith("vfm:"):
        name = teacher[4:]
        if name not in cfg["teachers"]["vfms"]:
            raise UserFacingError(
                f"unknown teacher {teacher!r}: {name!r} is not in `teachers.vfms`; allowed: "
                + ", ".join(f"vfm:{n}" for n in sorted(cfg["teachers"]["vfms"])) + ", sd"
            )
        return "tokens", name
    raise UserFacingError(f"unknown teacher {teacher!r}: use vfm:<name> (a key of teachers.vfms) or sd")


def teacher_spec(cfg: dict, teacher: str) -> dict:
    """Everything the teacher's output depends on (its fingerprint)."""
    kind, name = parse_teacher(cfg, teacher)
    spec = cfg["teachers"]["vfms"][name] if kind == "tokens" else {k: v for k, v in cfg["teachers"]["sd"].items() if k != "cache_topk"}
    from declip.models.mini_teachers import weights_digest

    return {"teacher": teacher, "kind": kind, "spec": spec, "seed": cfg["seed"], "grid": list(student_grid(cfg["student"])),
            "weights": weights_digest(cfg, name or "sd")}


class OnlineTeacher:
    """A teacher computed in the training step (teachers.cache_mode: online); `.get(images01)` as the cache's."""

    def __init__(self, cfg: dict, teacher: str, device: str = "auto"):
        self.teacher = teacher
        self.kind, name = parse_teacher(cfg, teacher)
        self.grid = student_grid(cfg["student"])
        precision = cfg["teachers"].get("precision", "fp16")
        from declip.models.mini_teachers import weights_path

        weights = weights_path(cfg, name or "sd")  # a pretrained mini teacher, or None
        if self.kind == "tokens":
            from declip.models.vfm import load_vfm

            self.model = load_vfm(cfg["teachers"]["vfms"][name], cfg["seed"], precision=precision, name=name, weights=weights)
        else:
            from declip.models.sd import load_sd

            self.model = load_sd(cfg["teachers"]["sd"], cfg["seed"], precision=precision, weights=weights)
        from declip.device import pick_device

        self.model.to(pick_device(device))

    def get(self, images01):
        """Teacher output for [0,1] images ((B,3,H,W) or a list): tokens (B,h,w,D) or affinity (B,N,N), float32."""
        if self.kind == "tokens":
            return self.model.tokens(images01, self.grid)
        return self.model.affinity(images01, self.grid)


# ---------------------------------------------------------------------------------------------------
# Storage
# ---------------------------------------------------------------------------------------------------

def _fingerprint(spec: dict, image_ids: list[str], storage: dict) -> str:
    blob = json.dumps({"spec": spec, "ids": image_ids, "storage": storage}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def topk_rows(a, k: int):
    """(N,N) -> (values fp16 (N,k), indices int16 (N,k)): the k largest entries of each row."""
    import numpy as np
    import torch

    values, indices = torch.topk(a, k, dim=-1)
    return values.to(torch.float16).cpu().numpy(), indices.to(torch.int16).cpu().numpy().astype(np.int16)


def dense_from_topk(values, indices, n: int):
    """Inverse of topk_rows (missing entries 0), rows renormalised to sum 1."""
    import torch

    values = torch.as_tensor(values).float()
    out = torch.zeros((*values.shape[:-1], n), dtype=torch.float32)
    out.scatter_(-1, torch.as_tensor(indices).long(), values)
    return out / out.sum(-1, keepdim=True).clamp_min(1e-12)


def _write_shard(path: Path, arrays: dict) -> None:
    """Atomic: a killed run never leaves a half-written shard under the final name."""
    import numpy as np

    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)  # uncompressed: members are read directly, per image
    os.replace(tmp, path)


def _shard_fingerprint(path: Path) -> str | None:
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as z:
            return _read_meta(z)["fingerprint"]
    except Exception:  # missing, truncated or foreign file: recompute it
        return None


def _meta_array(meta: dict):
    import numpy as np

    return np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)


def _read_meta(npz) -> dict:
    return json.loads(npz[META_KEY].tobytes().decode())


def extract(cfg: dict, dataset: str, teacher: str, out_index: str | Path, device: str = "auto",
            progress: bool = True) -> dict:
    """Extract (resumably) the teacher cache of `dataset`; returns the index dict written to `out_index`."""
    import numpy as np
    import torch
    from tqdm import tqdm

    from declip.data.images import list_images, load_image

    spec = dataset_spec(cfg, dataset)
    out_index = resolve_path(out_index)
    folder = out_index.parent
    folder.mkdir(parents=True, exist_ok=True)
    items = list_images(spec)
    ids = [i for i, _ in items]
    tcfg = cfg["teachers"]
    kind, _ = parse_teacher(cfg, teacher)
    spec = teacher_spec(cfg, teacher)
    topk = tcfg["sd"].get("cache_topk") if kind == "affinity" else None
    grid = tuple(spec["grid"])
    n_tokens = grid[0] * grid[1]
    if topk is not None and topk >= n_tokens:
        topk = None  # keeping every entry is the dense form
    storage = {"format": "topk" if topk else "dense", "topk": topk, "dtype": "float16"}
    shard_size = int(tcfg["shard_size"])
    n_shards = (len(ids) + shard_size - 1) // shard_size
    shards = [ids[s * shard_size:(s + 1) * shard_size] for s in range(n_shards)]
    fingerprints = [_fingerprint(spec, s, storage) for s in shards]
    for stale in folder.glob("shard-*.npz.tmp*"):  # left by a killed run; never read
        stale.unlink(missing_ok=True)
    todo = [s for s in range(n_shards) if _shard_fingerprint(folder / SHARD_NAME.format(s)) != fingerprints[s]]
    log.info("teacher %s on %s: %d images, %d shards, %d to compute (grid %s, %s)",
             teacher, dataset, len(ids), n_shards, len(todo), grid, storage["format"])

    done_images, seconds = 0, 0.0
    if todo:
        model = OnlineTeacher(cfg, teacher, device=device)
        batch_size = int(tcfg["batch_size"])
        batches = [(s, list(range(s * shard_size + b, min(s * shard_size + b + batch_size, (s + 1) * shard_size, len(ids)))))
                   for s in todo for b in range(0, len(shards[s]), batch_size)]
        loader = torch.utils.data.DataLoader(
            _ImageList([p for _, p in items], load_image), batch_sampler=[b for _, b in batches],
            collate_fn=list, num_workers=int(tcfg.get("num_workers", 0)))
        total = sum(len(shards[s]) for s in todo)
        bar = tqdm(total=total, desc=f"teacher {teacher}", unit="img", disable=not progress)
        pending: dict[int, dict] = {}
        retained: dict[int, list] = {}  # top-k storage: retained mass of every row
        start = time.time()
        for (s, positions), images in zip(batches, loader):
            out = model.get(images).cpu()
            arrays = pending.setdefault(s, {})
            for pos, value in zip(positions, out):
                key = f"{pos - s * shard_size:05d}"
                if topk:
                    vals, idx = topk_rows(value, topk)
                    arrays[key + ".values"], arrays[key + ".indices"] = vals, idx
                    retained.setdefault(s, []).append(vals.astype(np.float32).sum(-1))
                else:
                    arrays[key] = value.to(torch.float16).numpy()
            bar.update(len(positions))
            if len(arrays) == len(shards[s]) * (2 if topk else 1):
                meta = {"fingerprint": fingerprints[s], "image_ids": shards[s]}
                if topk:
                    mass = np.concatenate(retained.pop(s))
                    meta["retained_mass"] = {"min": float(mass.min()), "sum": float(mass.sum()), "rows": int(mass.size)}
                arrays[META_KEY] = _meta_array(meta)
                _write_shard(folder / SHARD_NAME.format(s), pending.pop(s))
        bar.close()
        seconds = time.time() - start
        done_images = total
        log.info("teacher %s: %d images in %.1f s (%.2f images/s)", teacher, total, seconds, total / max(seconds, 1e-9))

    index = {
        "teacher": teacher, "kind": kind, "grid": list(grid), "image_ids": ids,
        "shards": [SHARD_NAME.format(s) for s in range(n_shards)], "shard_size": shard_size,
        "storage": storage, "spec": spec["spec"], "seed": spec["seed"], "dataset": dataset,
    }
    if topk:
        index["retained_mass"] = _retained_mass(folder, n_shards)
    index["throughput"] = {"images": done_images, "seconds": round(seconds, 3),
                           "images_per_s": round(done_images / seconds, 3) if seconds else None}
    tmp = out_index.with_name(out_index.name + ".tmp")
    tmp.write_text(json.dumps(index))
    os.replace(tmp, out_index)  # written last: its presence marks a complete cache
    return index


def _retained_mass(folder: Path, n_shards: int) -> dict:
    """Min and mean kept row mass of a top-k affinity cache, over all shards (from their metadata)."""
    import numpy as np

    stats = []
    for s in range(n_shards):
        with np.load(folder / SHARD_NAME.format(s), allow_pickle=False) as z:
            stats.append(_read_meta(z)["retained_mass"])
    rows = sum(m["rows"] for m in stats)
    return {"min": min(m["min"] for m in stats), "mean": sum(m["sum"] for m in stats) / rows}


class _ImageList:
    """Map-style dataset of image files ([0,1] tensors of their own sizes)."""

    def __init__(self, paths, loader):
        self.paths, self.loader = paths, loader

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return self.loader(self.paths[i])


# ---------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------

class TeacherCache:
    """Read a teacher cache: `.get(image_ids)` -> float32 tokens (B,h,w,D) or affinity (B,N,N)."""

    def __init__(self, index_json: str | Path, max_open: int = OPEN_SHARDS):
        path = resolve_path(index_json)
        if not path.exists():
            raise UserFacingError(f"teacher cache index {path} does not exist: run `declip teachers` (the teachers rule) first")
        self.index = json.loads(path.read_text())
        self.folder = path.parent
        self.kind = self.index["kind"]
        self.grid = tuple(self.index["grid"])
        self.teacher = self.index["teacher"]
        self.shard_size = int(self.index["shard_size"])
        self.storage = self.index.get("storage", {"format": "dense"})
        self.position = {image_id: i for i, image_id in enumerate(self.index["image_ids"])}
        self.max_open = max_open
        self._open: OrderedDict[int, object] = OrderedDict()
        self._pid = os.getpid()

    def __contains__(self, image_id):
        return image_id in self.position

    def _shard(self, s: int):
        import numpy as np

        if self._pid != os.getpid():  # forked (data-loader worker): never share zip file offsets
            self._open.clear()
            self._pid = os.getpid()
        if s in self._open:
            self._open.move_to_end(s)
            return self._open[s]
        handle = np.load(self.folder / self.index["shards"][s], allow_pickle=False)
        self._open[s] = handle
        while len(self._open) > self.max_open:
            self._open.popitem(last=False)[1].close()
        return handle

    def _one(self, image_id: str):
        import torch

        try:
            pos = self.position[image_id]
        except KeyError:
            raise UserFacingError(f"image {image_id!r} is not in the teacher cache {self.folder} (re-extract it for this dataset)") from None
        shard = self._shard(pos // self.shard_size)
        key = f"{pos % self.shard_size:05d}"
        if self.storage["format"] == "topk":
            n = self.grid[0] * self.grid[1]
            return dense_from_topk(shard[key + ".values"], shard[key + ".indices"], n)
        return torch.from_numpy(shard[key].astype("float32"))

    def get(self, image_ids):
        """Stacked float32 teacher outputs of the given image ids, in order."""
        import torch

        return torch.stack([self._one(i) for i in image_ids])
