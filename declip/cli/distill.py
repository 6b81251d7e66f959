"""`declip distill`: distil one variant into an open_clip checkpoint (declip.distill.trainer).

Under torchrun (WORLD_SIZE > 1) every process runs this verb; the trainer sets up DDP and keeps the
total batch with gradient accumulation. A re-run resumes from `<out dir>/state/` automatically.
"""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--variant", required=True, help="A name of `variant_presets` (e.g. declip, clipself, no_rcc).")
    parser.add_argument("--data", required=True,
                        help="Completeness marker of the dataset `distill.dataset` (its MANIFEST.json or download "
                             "marker), or a folder of images that replaces the dataset's root.")
    parser.add_argument("--teachers", nargs="*", default=[],
                        help="Teacher cache index.json files (VFM tokens, SD affinities) of `declip teachers`; "
                             "not needed with teachers.cache_mode online.")
    parser.add_argument("--out", required=True, help="Model to write, e.g. results/distill/<variant>/model.pt.")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (the rule passes {threads}).")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="Training device.")


def dataset_items(cfg: dict, data: str) -> list:
    """(image_id, path) of the distillation images: `distill.dataset`'s split, or the folder given as --data."""
    from pathlib import Path

    from declip.config import dataset_spec, resolve_path
    from declip.data.images import IMAGE_SUFFIXES, list_images
    from declip.errors import UserFacingError

    name = cfg["distill"]["dataset"]
    spec = dataset_spec(cfg, name)
    path = resolve_path(data)
    if path.is_dir():
        has_images = any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir())
        spec.update(root=str(path), split=None if has_images else spec.get("split"))
    elif not Path(path).exists():
        raise UserFacingError(f"--data {data} does not exist: build the dataset `{name}` first (its dataset rule)")
    return list_images(spec)


def run(args, cfg) -> dict:
    from declip.config import variant_method
    from declip.distill.trainer import distill

    # A job's slice has `method` already resolved; a full config (manual use) resolves the variant here.
    method = variant_method(cfg, args.variant) if "variant_presets" in cfg else cfg["method"]
    items = dataset_items(cfg, args.data)
    result = distill(cfg, method, args.variant, items, args.out, teacher_indexes=args.teachers,
                     device=args.device, dataset_label=str(args.data))
    metrics = dict(result["metrics"], seconds=result["seconds"])
    return {"metrics": metrics, "step_metrics": str(result["losses"]), "artifacts": [str(result["provenance"])]}
