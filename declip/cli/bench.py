"""`declip bench <what>`: benchmarks that print figures.

`declip bench distill` times the real training step (declip.distill.bench) of a preset's student and
teachers on synthetic images: images/s, the time split, peak memory and, on CUDA, MFU.
"""

from __future__ import annotations


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="what", required=True, metavar="WHAT")
    p = sub.add_parser("distill", help="Throughput and time split of one distillation step.",
                       description="Throughput, time split, peak memory and MFU of one distillation step "
                                   "(synthetic images, on-line teachers; no data needed).")
    p.add_argument("--preset", default=None, choices=["mini", "paper-b16", "paper-l14"],
                   help="Models and sizes to time; default: the config's preset (mini = config.yaml).")
    p.add_argument("--variant", default="declip", help="Variant whose losses and teachers are timed (default declip).")
    p.add_argument("--steps", type=int, default=10, help="Timed steps (after --warmup untimed ones).")
    p.add_argument("--warmup", type=int, default=2, help="Untimed steps first (allocator, kernels).")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="Device to time on.")
    p.add_argument("--random-weights", action="store_true",
                   help="Random student / teacher weights of the preset's architectures (no checkpoints needed).")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads.")
    p.add_argument("--json", default=None, metavar="FILE", help="Also write the figures as JSON.")
    p.set_defaults(_bench=distill)


def run(args, cfg):
    return args._bench(args, cfg)


def distill(args, cfg) -> dict:
    import json
    from pathlib import Path

    from declip import config as config_mod
    from declip.distill.bench import bench_distill, format_report, random_teacher_specs
    from declip.errors import UserFacingError

    if args.preset and args.preset != cfg.get("preset"):
        if args.preset == "mini":
            cfg = config_mod.load(*args.configfile)
        else:
            path = config_mod.workflow_dir() / "workflow" / "presets" / f"{args.preset}.yaml"
            if not path.exists():
                raise UserFacingError(f"preset file {path} is missing; use --preset mini or restore workflow/presets/")
            cfg = config_mod.load(path, *args.configfile)
    if args.random_weights:
        cfg = random_teacher_specs(cfg)
    result = bench_distill(cfg, variant=args.variant, steps=args.steps, warmup=args.warmup, device=args.device,
                           random_weights=args.random_weights)
    print(format_report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    keys = ("images_per_s", "step_ms", "mfu", "peak_memory_gib", "flops_per_step")
    metrics = {k: result[k] for k in keys if isinstance(result.get(k), (int, float))}
    metrics.update({f"split_ms/{k}": 1000 * v for k, v in result["split_s_per_step"].items()})
    return {"metrics": metrics, "artifacts": [args.json] if args.json else []}
