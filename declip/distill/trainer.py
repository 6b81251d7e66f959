"""The distillation loop (method.md sections 1 and 5): student, frozen teachers, AdamW, schedule, DDP,
gradient accumulation, resumable checkpoints, loss log, and the weight-space ensemble at the end.

One optimizer step sees `distill.batch_size` images whatever the world size: each rank takes its share
of the step's images (declip.distill.data) in micro-batches of `per_device_batch` and accumulates.
Data order and regions are pure functions of (seed, step), so a run resumed from a checkpoint replays
exactly what an uninterrupted run computes.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from declip.config import config_hash, git_sha
from declip.distill.losses import needs
from declip.models.clip import param_groups
from declip.errors import UserFacingError

log = logging.getLogger(__name__)

LOSS_TERMS = ("loss", "loss_self", "loss_rcc", "loss_context")


# ----------------------------------------------------------------------------------------- models
def build_models(cfg: dict, method: dict, device, random_weights: bool = False):
    """(clip, student DenseCLIP, teacher DenseCLIP, original clip): the student's CLIP is trainable per
    `set_trainable`; the original is a frozen copy, the content teacher and the ensemble partner (method.md 1)."""
    from declip.models.clip import create_clip, load_clip
    from declip.models.dense import DenseCLIP, dense_model, set_trainable

    clip = create_clip(cfg["student"]) if random_weights else load_clip(cfg["student"])
    original = copy.deepcopy(clip).eval().requires_grad_(False)
    set_trainable(clip, method["trainable_blocks"], method["dense_mode"], method["context_proj"])
    student = dense_model(clip, method).to(device).train()
    if cfg["distill"].get("grad_checkpointing"):
        student.set_grad_checkpointing(True)
    teacher = DenseCLIP(original, dense_mode="vanilla").to(device).eval()
    return clip, student, teacher, original


def pinned_rows(clip, original, method: dict) -> list[tuple]:
    """(student tensor, original tensor, rows): fused q/k/v rows the decoupled block never reads, held at the
    original's values after every step (`declip.models.dense.unused_fused_rows`)."""
    from declip.models.dense import unused_fused_rows

    args = (method["dense_mode"], method["context_proj"])
    return [(p, ref, rows) for (p, rows), (ref, _) in
            zip(unused_fused_rows(clip, *args), unused_fused_rows(original, *args))]


def make_optimizer(clip, dcfg: dict):
    """AdamW over the two parameter groups (method.md section 5)."""
    import torch

    return torch.optim.AdamW(param_groups(clip, dcfg["weight_decay"]), lr=dcfg["lr"], betas=tuple(dcfg["betas"]),
                             eps=dcfg["eps"])


def micro_batch(dcfg: dict, world_size: int) -> int:
    """Images per forward on one process; the step's `distill.batch_size` must split into whole micro-batches."""
    batch_size = dcfg["batch_size"]
    micro = dcfg["per_device_batch"] or max(1, batch_size // world_size)
    if batch_size % (micro * world_size):
        raise UserFacingError(f"distill.batch_size {batch_size} is not a multiple of per_device_batch {micro} x "
                              f"{world_size} processes; change `distill.per_device_batch`")
    return micro


def lr_factor(step: int, total: int, warmup: int, schedule: str = "cosine") -> float:
    """Per-iteration linear warm-up then cosine to 0 (code / CLIPSelf cosine_lr), as a factor of distill.lr."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    span = max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / span))


def weight_ensemble(student_sd: dict, original_sd: dict, alpha: float) -> dict:
    """a * student + (1 - a) * original for every floating tensor (CLIPSelf weight-space ensemble, method.md 1)."""
    import torch

    out = {}
    for key, s in student_sd.items():
        o = original_sd[key]
        if not s.is_floating_point() or torch.equal(s, o):  # frozen weights stay bit-identical
            out[key] = s.clone()
        else:
            out[key] = (alpha * s.float() + (1.0 - alpha) * o.float()).to(s.dtype)
    return out


# --------------------------------------------------------------------------------------- teachers
class CachedTeachers:
    """VFM tokens / SD affinities read from TeacherCache files (extracted once per dataset, method.md 4)."""

    def __init__(self, index_paths: list, method: dict, grid: tuple):
        from declip.distill.cache import TeacherCache

        self.vfm = self.sd = None
        for path in index_paths:
            cache = TeacherCache(path)
            if cache.kind == "tokens" and cache.teacher.split(":")[-1] != method["vfm"]:
                continue
            if cache.grid != tuple(grid):
                raise UserFacingError(
                    f"teacher cache {path} has grid {list(cache.grid)} but the student's token grid is {list(grid)}: "
                    "re-extract the cache with the same `student.image_size`")
            if cache.kind == "tokens":
                self.vfm = cache
            else:
                self.sd = cache
        need = needs(method)
        for kind, have in (("vfm", self.vfm), ("sd", self.sd)):
            if need[kind] and have is None:
                what = f"VFM {method['vfm']!r} tokens" if kind == "vfm" else "SD affinities"
                raise UserFacingError(
                    f"this variant needs {what} but no matching --teachers index.json was given "
                    f"(got {[str(p) for p in index_paths]}); pass the cache of `declip teachers`")
        self.need = need

    def __call__(self, ids: list, images01, timer):
        vfm = aff = None
        if self.need["vfm"]:
            with timer("vfm"):
                vfm = self.vfm.get(ids).to(images01.device, non_blocking=True).float()
        if self.need["sd"]:
            with timer("sd"):
                aff = self.sd.get(ids).to(images01.device, non_blocking=True).float()
        return vfm, aff


class OnlineTeachers:
    """VFM / SD computed in the training step from the letterboxed batch (teachers.cache_mode online)."""

    def __init__(self, cfg: dict, method: dict, device):
        from declip.distill.cache import OnlineTeacher

        self.need = needs(method)
        self.vfm = OnlineTeacher(cfg, f"vfm:{method['vfm']}", str(device)) if self.need["vfm"] else None
        self.sd = OnlineTeacher(cfg, "sd", str(device)) if self.need["sd"] else None

    def __call__(self, ids: list, images01, timer):
        import torch

        vfm = aff = None
        with torch.no_grad():
            # A letterbox of the square student letterbox is the same letterbox, so grids stay aligned.
            if self.vfm is not None:
                with timer("vfm"):
                    vfm = self.vfm.get(images01).float()
            if self.sd is not None:
                with timer("sd"):
                    aff = self.sd.get(images01).float()
        return vfm, aff


# ------------------------------------------------------------------------------------------ timing
class PhaseTimer:
    """Wall time per phase (data, teacher_crops, vfm, sd, student, optimizer); CUDA-synchronised when asked."""

    def __init__(self, sync: bool = False):
        self.sync, self.seconds = sync, {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        if self.sync:
            import torch

            torch.cuda.synchronize()
        start = time.perf_counter()
        yield
        if self.sync:
            import torch

            torch.cuda.synchronize()
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


# ------------------------------------------------------------------------------------------- step
@dataclass
class StepContext:
    """What one optimizer step needs besides the batch."""

    student: object
    teacher: object
    teachers: object  # CachedTeachers | OnlineTeachers
    optimizer: object
    method: dict
    student_cfg: dict
    device: object
    image_ids: list
    seed: int
    batch_size: int
    micro_batch: int
    rank: int = 0
    world_size: int = 1
    amp_dtype: object = None
    scaler: object = None
    pinned: list = field(default_factory=list)  # pinned_rows(...)
    crop_memo: object = None  # CropTargetMemo (distill.crop_target_cache) or None
    timer: PhaseTimer = field(default_factory=PhaseTimer)


def train_step(ctx: StepContext, step: int, micro_batches: list) -> dict:
    """One optimizer step over this rank's micro-batches; returns the mean loss terms (floats)."""
    import torch

    from declip.data.images import normalize
    from declip.distill.data import rank_positions
    from declip.distill.losses import Teachers, crop_targets, distill_losses
    from declip.distill.regions import region_generator, sample_regions, to_rois

    m, scfg, t = ctx.method, ctx.student_cfg, ctx.timer
    accum = len(micro_batches)
    sums = {k: 0.0 for k in LOSS_TERMS}
    autocast = (torch.autocast(device_type=ctx.device.type, dtype=ctx.amp_dtype) if ctx.amp_dtype is not None
                else contextlib.nullcontext())
    for micro, batch in enumerate(micro_batches):
        with t("data"):
            images = batch["image"].to(ctx.device, non_blocking=True)
            positions = rank_positions(ctx.batch_size, ctx.micro_batch, ctx.rank, ctx.world_size, micro)
            gens = [region_generator(ctx.seed, step, p) for p in positions]
            boxes = sample_regions(batch["size"].tolist(), m["grid_max"], m["max_regions"], gens)
            rois = to_rois(boxes).to(ctx.device)
            ids = [ctx.image_ids[i] for i in batch["index"].tolist()]
        crops = None
        if m["content_loss"] == "self":
            with t("teacher_crops"), autocast:
                # Regions are drawn on the letterbox; the crops are cut from the original image (box / scale).
                orig_boxes = [b.double() / s for b, s in zip(boxes, batch["scale"].tolist())]

                def compute():
                    return crop_targets(ctx.teacher, batch["original"], orig_boxes, scfg["crop_size"], scfg["mean"], scfg["std"])

                crops = ctx.crop_memo(batch["original"], orig_boxes, compute, ctx.device) if ctx.crop_memo else compute()
        vfm, aff = ctx.teachers(ids, images, t)
        sync = (ctx.student.no_sync() if hasattr(ctx.student, "no_sync") and micro < accum - 1
                else contextlib.nullcontext())
        with t("student"), sync:
            with autocast:
                out = ctx.student(normalize(images, scfg["mean"], scfg["std"]))
            terms = distill_losses(out, rois, Teachers(crops, vfm, aff), m, scfg["image_size"])
            # One device->host transfer for all terms (a sync per micro-batch, needed for the finiteness check).
            values = dict(zip(LOSS_TERMS, torch.stack([terms[k].detach().float() for k in LOSS_TERMS]).tolist()))
            if not math.isfinite(values["loss"]):
                raise UserFacingError(
                    f"non-finite loss at step {step + 1}: " + ", ".join(f"{k}={values[k]}" for k in LOSS_TERMS)
                    + "; lower `distill.lr`, use `distill.precision: fp32`/`bf16`, or check the teacher cache")
            loss = terms["loss"] / accum
            (ctx.scaler.scale(loss) if ctx.scaler is not None else loss).backward()
        for k in LOSS_TERMS:
            sums[k] += values[k] / accum
    with t("optimizer"):
        if ctx.scaler is not None:
            ctx.scaler.step(ctx.optimizer)
            ctx.scaler.update()
        else:
            ctx.optimizer.step()
        ctx.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for p, ref, rows in ctx.pinned:
                p[rows] = ref[rows]
    return sums


# ------------------------------------------------------------------------------------ checkpoints
def latest_state(state_dir: Path) -> Path | None:
    files = sorted(state_dir.glob("step-*.pt"))
    return files[-1] if files else None


def save_state(state_dir: Path, step: int, clip, optimizer, scheduler, scaler, chash: str) -> Path:
    """Atomically write the resumable state (trainable weights, optimizer, scheduler, step, RNG) and drop older ones."""
    import torch

    state_dir.mkdir(parents=True, exist_ok=True)
    trainable = {n for n, p in clip.named_parameters() if p.requires_grad}
    state = {
        "step": step,
        "config_hash": chash,
        "student": {k: v.detach().cpu() for k, v in clip.state_dict().items() if k in trainable},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    path = state_dir / f"step-{step:09d}.pt"
    tmp = path.with_suffix(".pt.tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    for old in state_dir.glob("step-*.pt"):
        if old != path:
            old.unlink()
    return path


def read_state(path: Path) -> dict | None:
    """A checkpoint written by `save_state`, or None when it is unreadable (e.g. truncated by a crash)."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file just means "start over"
        log.warning("cannot read %s (%s): not resuming from it", path, e)
        return None


def apply_state(state: dict, clip, optimizer, scheduler, scaler) -> int:
    """Restore weights, optimizer, scheduler, scaler and RNG from a checkpoint; returns its step."""
    import torch

    missing = {n for n, p in clip.named_parameters() if p.requires_grad} - set(state["student"])
    if missing:
        raise UserFacingError(f"the resumable state lacks trainable weights {sorted(missing)[:3]}; "
                              "delete the run's state/ folder to restart")
    clip.load_state_dict(state["student"], strict=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng_cpu"])
    if torch.cuda.is_available() and len(state["rng_cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["rng_cuda"])
    return int(state["step"])


# ------------------------------------------------------------------------------------ environment
@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_arg: str):
    """(Dist, device): torch.distributed from torchrun's environment when WORLD_SIZE > 1."""
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    from declip.device import pick_device

    device = pick_device(device_arg)
    use_cuda = device.type == "cuda"
    if world <= 1:
        return Dist(), device
    import torch.distributed as dist

    d = Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if use_cuda:
        torch.cuda.set_device(d.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return d, torch.device(f"cuda:{d.local_rank}" if use_cuda else "cpu")


def amp_setup(device, precision: str):
    """(autocast dtype or None, GradScaler or None): bf16/fp16 on CUDA (paper: mixed precision), fp32 on CPU."""
    import torch

    if device.type != "cuda" or precision == "fp32":
        return None, None
    if precision == "bf16" and torch.cuda.is_bf16_supported():
        return torch.bfloat16, None
    if precision == "bf16":
        log.warning("this GPU has no bf16: falling back to fp16 autocast with a gradient scaler")
    return torch.float16, torch.amp.GradScaler("cuda")


def make_crop_memo(cfg: dict, method: dict, original, amp_dtype):
    """The shared memo of crop targets under `paths.cache` when `distill.crop_target_cache` is on."""
    if not cfg["distill"].get("crop_target_cache") or method["content_loss"] != "self":
        return None
    from declip.config import resolve_path
    from declip.distill.crop_memo import CropTargetMemo

    scfg = cfg["student"]
    settings = {"crop_size": scfg["crop_size"], "mean": scfg["mean"], "std": scfg["std"], "amp": str(amp_dtype),
                "device": next(original.parameters()).device.type}
    return CropTargetMemo(resolve_path(cfg["paths"]["cache"]) / "crop_targets", original, settings)


def distill_hash(cfg: dict, method: dict) -> str:
    """Config hash of everything a distillation reads (the resolved method included)."""
    from declip.config import RULE_SECTIONS

    sliced = {k: cfg[k] for k in RULE_SECTIONS["distill"] if k in cfg}
    sliced["method"] = method
    return config_hash(sliced)


# -------------------------------------------------------------------------------------------- main
def distill(cfg: dict, method: dict, variant: str, items: list, out_path: str | Path, teacher_indexes: list | None = None,
            device: str = "auto", on_step_end=None, dataset_label: str = "") -> dict:
    """Distil one variant on `items` [(image_id, path)] and save the ensembled model to `out_path`.

    Resumes from `<out dir>/state/` when a checkpoint of the same config exists. `on_step_end(step, terms)`
    is called after every completed optimizer step (and its checkpoint); tests use it to interrupt a run.
    Returns {"metrics", "seconds", "losses", "provenance", "steps"}.
    """
    import torch
    from tqdm import tqdm

    from declip.distill.cache import student_grid
    from declip.distill.data import LetterboxDataset, StepBatchSampler, collate, total_steps

    if not method["train"]:
        raise UserFacingError(f"variant {variant!r} has `train: false` (it is the original CLIP): evaluate "
                              "`student.checkpoint` directly instead of distilling it")
    if method["content_loss"] == "none" and method["context_loss"] == "none" and not method["rcc"]:
        raise UserFacingError(f"variant {variant!r} has no loss term: enable `content_loss`, `rcc` or `context_loss`")
    if method["dense_mode"] in ("vanilla", "value") and method["context_loss"] != "none" and not method["coupled"]:
        raise UserFacingError(f"variant {variant!r}: dense_mode {method['dense_mode']!r} has no X_context; "
                              "set `context_loss: none` or `coupled: true`")
    dcfg = cfg["distill"]
    start_time = time.time()
    dist_env, dev = init_distributed(device)
    torch.manual_seed(cfg["seed"])
    out_path = Path(out_path)
    out_dir = out_path.parent
    state_dir = out_dir / "state"
    losses_path = out_dir / "losses.jsonl"

    batch_size = dcfg["batch_size"]
    micro = micro_batch(dcfg, dist_env.world_size)
    steps = total_steps(dcfg["epochs"], len(items), batch_size, dcfg["max_steps"])

    clip, student, teacher, original = build_models(cfg, method, dev)
    grid = student_grid(cfg["student"])
    if cfg["teachers"]["cache_mode"] == "cached":
        teachers = CachedTeachers(teacher_indexes or [], method, grid)
    else:
        teachers = OnlineTeachers(cfg, method, dev)
    model = student
    if dist_env.world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            student, device_ids=[dist_env.local_rank] if dev.type == "cuda" else None)

    optimizer = make_optimizer(clip, dcfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, steps, dcfg["warmup_steps"], dcfg["schedule"]))
    amp_dtype, scaler = amp_setup(dev, dcfg["precision"])

    chash = distill_hash(cfg, method)
    start_step = 0
    ckpt = latest_state(state_dir)
    state = read_state(ckpt) if ckpt is not None else None
    if state is not None and state.get("config_hash") == chash:
        start_step = apply_state(state, clip, optimizer, scheduler, scaler)
        log.info("resuming %s from %s (step %d of %d)", variant, ckpt, start_step, steps)
    elif state is not None:
        log.warning("ignoring %s: it was written for another configuration (delete it to save space)", ckpt)
    del state
    if dist_env.main:
        _truncate_log(losses_path, start_step, saved=state_dir / LOSSES_COPY if start_step else None)

    dataset = LetterboxDataset(items, cfg["student"]["image_size"])
    sampler = StepBatchSampler(len(items), batch_size, micro, cfg["seed"], start_step, steps,
                               dist_env.rank, dist_env.world_size)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate,
                                         num_workers=dcfg["num_workers"], pin_memory=dev.type == "cuda")
    ctx = StepContext(student=model, teacher=teacher, teachers=teachers, optimizer=optimizer, method=method,
                      student_cfg=cfg["student"], device=dev, image_ids=[i for i, _ in items], seed=cfg["seed"],
                      batch_size=batch_size, micro_batch=micro, rank=dist_env.rank,
                      world_size=dist_env.world_size, amp_dtype=amp_dtype, scaler=scaler,
                      pinned=pinned_rows(clip, original, method), crop_memo=make_crop_memo(cfg, method, original, amp_dtype))
    last = {}
    log_time, log_images = time.time(), 0
    bar = tqdm(total=steps, initial=start_step, desc=f"distill {variant}", disable=not dist_env.main, unit="step")
    it = iter(loader)
    for step in range(start_step, steps):
        with ctx.timer("data"):  # image decode + letterbox (the loader), then transfer and regions in train_step
            batches = [next(it) for _ in range(sampler.accum)]
        terms = train_step(ctx, step, batches)
        scheduler.step()
        done = step + 1
        log_images += batch_size
        if done % dcfg["log_every"] == 0 or done == steps:
            terms = _reduce_mean(terms, dist_env)
            now = time.time()
            # lr of the step just taken (the scheduler has already moved to the next one).
            record = {"step": done, "lr": dcfg["lr"] * lr_factor(step, steps, dcfg["warmup_steps"], dcfg["schedule"]),
                      **terms, "images_per_s": log_images / max(now - log_time, 1e-9)}
            log_time, log_images = now, 0
            last = record
            if dist_env.main:
                with open(losses_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                bar.set_postfix(loss=f"{terms['loss']:.4f}", ips=f"{record['images_per_s']:.1f}")
        if done % dcfg["checkpoint_every"] == 0 and done < steps and dist_env.main:
            save_state(state_dir, done, clip, optimizer, scheduler, scaler, chash)
            _keep_curve(losses_path, state_dir / LOSSES_COPY)
        bar.update(1)
        if on_step_end is not None:
            on_step_end(done, terms)
    bar.close()
    seconds = time.time() - start_time

    provenance = out_dir / "provenance.json"
    if dist_env.main:
        prov = {"variant": variant, "config_hash": chash, "steps": steps, "resumed_from_step": start_step,
                "batch_size": batch_size, "world_size": dist_env.world_size, "device": str(dev),
                "dataset": {"name": dcfg["dataset"], "images": len(items), "source": dataset_label},
                "teachers": [str(p) for p in (teacher_indexes or [])], "cache_mode": cfg["teachers"]["cache_mode"],
                "ensemble_alpha": method["ensemble_alpha"], "seconds": round(seconds, 3), "git_sha": git_sha(),
                "final_losses": {k: last.get(k) for k in LOSS_TERMS},
                "time_split_s": {k: round(v, 3) for k, v in sorted(ctx.timer.seconds.items())}}
        save_outputs(clip, original, method["ensemble_alpha"], out_path, provenance, prov, state_dir)
    if dist_env.world_size > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    log.info("distilled %s: %d steps in %.1f s (%.1f images/s); time split: %s", variant, steps - start_step, seconds,
             (steps - start_step) * batch_size / max(seconds, 1e-9),
             ", ".join(f"{k} {v:.1f} s" for k, v in sorted(ctx.timer.seconds.items())))
    if ctx.crop_memo is not None:
        log.info("crop targets: %d micro-batches from the shared memo, %d computed", ctx.crop_memo.hits, ctx.crop_memo.misses)
    return {"metrics": {k: last.get(k) for k in LOSS_TERMS if last.get(k) is not None}, "seconds": seconds,
            "losses": losses_path, "provenance": provenance, "steps": steps}


def save_outputs(clip, original, alpha: float, out_path: Path, provenance: Path, prov: dict, state_dir: Path) -> None:
    """The ensembled model (open_clip layout), provenance.json (atomically), then drop the resumable state."""
    from declip.models.clip import save_clip

    # `original` is not needed any more: it receives the ensemble a * student + (1 - a) * original.
    original.load_state_dict(weight_ensemble(clip.state_dict(), original.state_dict(), alpha))
    save_clip(original, out_path)
    tmp = provenance.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(prov, indent=2))
    tmp.replace(provenance)
    # The final model is the product; the state would only resume a finished run.
    for f in [*state_dir.glob("step-*.pt"), state_dir / LOSSES_COPY]:
        f.unlink(missing_ok=True)


def _reduce_mean(terms: dict, dist_env: Dist) -> dict:
    if dist_env.world_size == 1:
        return terms
    import torch
    import torch.distributed as dist

    t = torch.tensor([terms[k] for k in LOSS_TERMS], dtype=torch.float64,
                     device="cuda" if torch.cuda.is_available() and dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t)
    return {k: float(v) / dist_env.world_size for k, v in zip(LOSS_TERMS, t.tolist())}


# The loss curve up to the checkpoint, kept beside it: Snakemake deletes an interrupted job's outputs
# (losses.jsonl among them) but not the state folder, so a resumed run's curve is whole.
LOSSES_COPY = "losses.jsonl"


def _keep_curve(losses: Path, copy: Path) -> None:
    tmp = copy.with_name(copy.name + ".tmp")
    tmp.write_bytes(losses.read_bytes() if losses.exists() else b"")
    tmp.replace(copy)


def _truncate_log(path: Path, step: int, saved: Path | None = None) -> None:
    """Keep only records up to `step` (a resumed run rewrites the later ones; a fresh run starts empty),
    read from the curve saved with the checkpoint when there is one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    keep = []
    source = saved if saved is not None and saved.exists() else path
    if step > 0 and source.exists():
        keep = [line for line in source.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in keep))
