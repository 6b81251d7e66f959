"""`declip figures`: patch-affinity maps and a segmentation example of one variant (PNG, matplotlib Agg)."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--variant", required=True, help="Variant name (a key of variant_presets).")
    parser.add_argument("--checkpoint", default=None,
                        help="Variant weights (default: the original CLIP for `clip`, else results/distill/<V>/model.pt).")
    parser.add_argument("--data", default=None, help="Dataset root or its MANIFEST.json (default: the dataset's `root`).")
    parser.add_argument("--dataset", default=None,
                        help="Key of `datasets` the images come from (default: evaluate.regionclf.dataset).")
    parser.add_argument("--teachers", required=True, help="index.json of the VFM teacher cache of that dataset.")
    parser.add_argument("--out-dir", required=True, help="Folder for the PNG files (results/figures/<V>).")
    parser.add_argument("--num-images", type=int, default=2, help="Images to draw (the first ones in the teacher cache).")
    parser.add_argument("--points", default=None,
                        help="Query points as 'x,y;x,y' fractions of the image (default: centres of the largest "
                             "annotated segments, else fixed points).")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N].")


def _parse_points(text: str | None):
    from declip.errors import UserFacingError

    if not text:
        return None
    try:
        pts = [tuple(float(v) for v in p.split(",")) for p in text.split(";") if p.strip()]
    except ValueError:
        pts = []
    if not pts or any(len(p) != 2 or not all(0.0 <= v <= 1.0 for v in p) for p in pts):
        raise UserFacingError(f"--points {text!r}: write 'x,y;x,y' with fractions of the image in [0, 1]")
    return pts


def run(args, cfg) -> dict:
    from declip.tables.figures import make_figures

    if args.num_images < 1:
        from declip.errors import UserFacingError

        raise UserFacingError("--num-images must be at least 1")
    if "variant_presets" in cfg:  # used by hand with the full config: resolve the variant's method
        from declip.config import variant_method

        cfg = {**cfg, "method": variant_method(cfg, args.variant)}
    dataset = args.dataset or cfg["evaluate"]["regionclf"]["dataset"]
    written = make_figures(cfg, args.variant, args.checkpoint, dataset, args.teachers, args.out_dir,
                           data_root=args.data, num_images=args.num_images, points=_parse_points(args.points),
                           device=args.device)
    return {"artifacts": [str(p) for p in written]}
