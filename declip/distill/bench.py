"""`declip bench distill`: throughput, time split, peak memory and MFU of the real training step.

It runs `declip.distill.trainer.train_step` (the same code as `declip distill`) on synthetic letterboxed
images with on-line teachers, so every phase is visible: data (batch transfer, region sampling),
teacher crops (the frozen CLIP on RoIAligned cells), VFM, SD, student (forward, losses, backward) and
the optimizer. CUDA timings are torch.cuda.synchronize-bounded. FLOPs are counted with
torch.utils.flop_counter.FlopCounterMode over one step (matmul/conv/attention FLOPs, the usual MFU basis).
"""

from __future__ import annotations

import time

# Dense (no sparsity) peaks in TFLOP/s per compute dtype. Source: NVIDIA H100 Tensor Core GPU datasheet
# (SXM / PCIe / NVL columns) and NVIDIA H200 Tensor Core GPU datasheet (SXM / NVL). The datasheets list
# tensor-core figures with sparsity; the dense figure is half. fp32 = the non-tensor-core FP32 peak,
# tf32 = the tensor-core peak fp32 matmuls reach when torch.backends.cuda.matmul.allow_tf32 is on.
PEAK_TFLOPS = {
    "H100 SXM": {"bf16": 989.5, "fp16": 989.5, "tf32": 494.5, "fp32": 67.0},
    "H100 PCIe": {"bf16": 756.5, "fp16": 756.5, "tf32": 378.0, "fp32": 51.0},
    "H100 NVL": {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0},
    "H200 SXM": {"bf16": 989.5, "fp16": 989.5, "tf32": 494.5, "fp32": 67.0},
    "H200 NVL": {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0},
}


# Architectures of the full-scale teachers, for timing with random weights when their checkpoints are
# not downloaded (values of the public Hugging Face config.json files of each model).
FULL_VFM_ARCH = {
    ("dinov2_reg", "base"): {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "mlp_ratio": 4,
                             "num_register_tokens": 4},
    ("dinov2_reg", "large"): {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "mlp_ratio": 4,
                              "num_register_tokens": 4},
    ("dinov2", "base"): {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "mlp_ratio": 4},
    ("dinov2", "large"): {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "mlp_ratio": 4},
    ("dino", "base"): {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
    ("sam", "base"): {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "output_channels": 256,
                      "window_size": 14, "global_attn_indexes": [2, 5, 8, 11], "mlp_dim": 3072},
    ("sam", "large"): {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "output_channels": 256,
                       "window_size": 14, "global_attn_indexes": [5, 11, 17, 23], "mlp_dim": 4096},
}
SD21_BASE_ARCH = {  # stabilityai/stable-diffusion-2-1-base unet/ and vae/ config.json
    "unet": {"sample_size": 64, "in_channels": 4, "out_channels": 4, "block_out_channels": [320, 640, 1280, 1280],
             "layers_per_block": 2, "cross_attention_dim": 1024, "attention_head_dim": [5, 10, 20, 20],
             "use_linear_projection": True,
             "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
             "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]},
    "vae": {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": [128, 256, 512, 512],
            "layers_per_block": 2, "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4},
}


def random_teacher_specs(cfg: dict) -> dict:
    """A copy of cfg whose teachers without a local checkpoint are built, randomly initialised, at full size."""
    import copy

    from declip.config import resolve_path

    cfg = copy.deepcopy(cfg)
    for name, spec in cfg["teachers"]["vfms"].items():
        if spec.get("tiny") or (spec.get("checkpoint") and resolve_path(spec["checkpoint"]).is_dir()):
            continue
        size = "large" if ("_l" in name or "large" in str(spec.get("checkpoint"))) else "base"
        arch = FULL_VFM_ARCH.get((spec["type"], size)) or FULL_VFM_ARCH.get((spec["type"], "base"))
        spec["tiny"] = dict(arch, **({"image_size": spec["input_size"]} if spec.get("input_size") else {}))
    sd = cfg["teachers"]["sd"]
    if not sd.get("tiny") and not (sd.get("checkpoint") and (resolve_path(sd["checkpoint"]) / "unet").is_dir()):
        sd["tiny"] = copy.deepcopy(SD21_BASE_ARCH)
    return cfg


def peak_tflops(device_name: str, dtype: str) -> tuple[float | None, str | None]:
    """(peak TFLOP/s, table row) for a CUDA device name, or (None, None) when it is not in the table."""
    name = device_name.upper()
    for gpu in ("H200", "H100"):
        if gpu in name:
            form = "PCIe" if "PCIE" in name else "NVL" if "NVL" in name else "SXM"
            row = f"{gpu} {form}" if f"{gpu} {form}" in PEAK_TFLOPS else f"{gpu} SXM"
            return PEAK_TFLOPS[row][dtype], row
    return None, None


def synthetic_batch(batch: int, image_size: int, generator):
    """Random letterboxed images: a random aspect per image, zero padding right/bottom like letterbox."""
    import torch

    images = torch.zeros(batch, 3, image_size, image_size)
    sizes = []
    for i in range(batch):
        short = int(torch.randint(image_size // 2, image_size + 1, (1,), generator=generator))
        h, w = (image_size, short) if i % 2 else (short, image_size)
        images[i, :, :h, :w] = torch.rand(3, h, w, generator=generator)
        sizes.append((h, w))
    # The "original" of each image is its unpadded content at scale 1 (the crop teacher cuts from it).
    return {"image": images, "size": torch.tensor(sizes), "index": torch.arange(batch),
            "original": [images[i, :, :h, :w] for i, (h, w) in enumerate(sizes)],
            "scale": torch.ones(batch, dtype=torch.float64)}


def bench_distill(cfg: dict, variant: str = "declip", steps: int = 10, warmup: int = 2, device: str = "auto",
                  random_weights: bool = False) -> dict:
    """Time `steps` training steps after `warmup` untimed ones; returns the figures as a dict."""
    import resource

    import torch

    from declip.config import variant_method
    from declip.device import pick_device
    from declip.distill.trainer import (OnlineTeachers, PhaseTimer, StepContext, amp_setup, build_models,
                                        make_optimizer, micro_batch, pinned_rows, train_step)

    method = variant_method(cfg, variant) if "variant_presets" in cfg else cfg["method"]
    dcfg = cfg["distill"]
    dev = pick_device(device)
    cuda = dev.type == "cuda"
    batch_size = dcfg["batch_size"]
    micro = micro_batch(dcfg, 1)
    accum = batch_size // micro

    clip, student, teacher, original = build_models(cfg, method, dev, random_weights=random_weights)
    teachers = OnlineTeachers(cfg, method, dev)
    optimizer = make_optimizer(clip, dcfg)
    amp_dtype, scaler = amp_setup(dev, dcfg["precision"])
    g = torch.Generator().manual_seed(cfg["seed"])
    batches = [synthetic_batch(micro, cfg["student"]["image_size"], g) for _ in range(accum)]
    ctx = StepContext(student=student, teacher=teacher, teachers=teachers, optimizer=optimizer, method=method,
                      student_cfg=cfg["student"], device=dev, image_ids=[str(i) for i in range(micro)],
                      seed=cfg["seed"], batch_size=batch_size, micro_batch=micro, amp_dtype=amp_dtype, scaler=scaler,
                      pinned=pinned_rows(clip, original, method))
    for step in range(warmup):
        train_step(ctx, step, batches)

    flops = None
    try:
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            train_step(ctx, warmup, batches)
        flops = counter.get_total_flops()
    except Exception as e:  # FLOP counting is informative only
        flops_error = f"{type(e).__name__}: {e}"
    else:
        flops_error = None

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(dev)
    ctx.timer = PhaseTimer(sync=cuda)
    start = time.perf_counter()
    for step in range(warmup + 1, warmup + 1 + steps):
        train_step(ctx, step, batches)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start

    out = {
        "variant": variant, "device": torch.cuda.get_device_name(dev) if cuda else "cpu",
        "threads": torch.get_num_threads(), "steps": steps, "batch_size": batch_size, "micro_batch": micro,
        "image_size": cfg["student"]["image_size"], "seconds": seconds, "step_ms": 1000 * seconds / steps,
        "images_per_s": steps * batch_size / seconds,
        "split_s_per_step": {k: v / steps for k, v in sorted(ctx.timer.seconds.items())},
        "flops_per_step": flops, "flops_error": flops_error,
    }
    if cuda:
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
        dtype = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(
            amp_dtype, "tf32" if torch.backends.cuda.matmul.allow_tf32 else "fp32")
        peak, row = peak_tflops(out["device"], dtype)
        out.update(dtype=dtype, peak_tflops=peak, peak_source=row and f"NVIDIA datasheet, {row} dense {dtype}")
        if peak and flops:
            out["achieved_tflops"] = flops * steps / seconds / 1e12
            out["mfu"] = out["achieved_tflops"] / peak
    else:
        out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        if flops:
            out["achieved_tflops"] = flops * steps / seconds / 1e12
    return out


def format_report(r: dict) -> str:
    lines = [f"declip bench distill: variant {r['variant']} on {r['device']} ({r['threads']} threads), "
             f"batch {r['batch_size']} (micro {r['micro_batch']}), {r['image_size']} px, {r['steps']} steps",
             f"  {r['images_per_s']:.1f} images/s, {r['step_ms']:.1f} ms/step"]
    total = sum(r["split_s_per_step"].values()) or 1.0
    for k, v in r["split_s_per_step"].items():
        lines.append(f"  {k:<14} {1000 * v:9.1f} ms/step  {100 * v / total:5.1f} %")
    if r.get("flops_per_step"):
        lines.append(f"  {r['flops_per_step'] / 1e9:.2f} GFLOP/step, {r['achieved_tflops']:.3f} TFLOP/s achieved")
    elif r.get("flops_error"):
        lines.append(f"  FLOPs not counted: {r['flops_error']}")
    if "peak_memory_gib" in r:
        lines.append(f"  peak CUDA memory {r['peak_memory_gib']:.2f} GiB")
        if r.get("mfu") is not None:
            lines.append(f"  MFU {100 * r['mfu']:.1f} % of {r['peak_tflops']} TFLOP/s ({r['peak_source']})")
        else:
            lines.append(f"  MFU: no peak figure for {r['device']} {r['dtype']} in declip.distill.bench.PEAK_TFLOPS")
    else:
        lines.append(f"  peak RSS {r['peak_rss_gib']:.2f} GiB (MFU is reported on CUDA only)")
    return "\n".join(lines)
