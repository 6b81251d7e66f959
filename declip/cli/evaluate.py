"""`declip evaluate <family>`: one task family's feature protocol on one dataset/benchmark and variant.

Sub-verbs: one per family (`SUBVERBS` below, with the protocols.md section each follows). Each writes the
family's metrics.json (docs/interfaces.md) and returns its headline numbers for tracking.
"""

from __future__ import annotations

SUBVERBS = {
    "regionclf": ("declip.evaluate.regionclf", "Region classification of COCO-panoptic segments (CLIPSelf protocol)."),
    "tfseg": ("declip.evaluate.tfseg", "Training-free open-vocabulary semantic segmentation (sliding window, mIoU)."),
    "ov3d": ("declip.evaluate.ov3d", "Open-vocabulary 3D instance segmentation feature protocol (ScanNet200 AP)."),
    "ov6dpe": ("declip.evaluate.ov6dpe", "Open-vocabulary 6D pose estimation, Oryon protocol (BOP AR, ADD(S))."),
    "ovvis": ("declip.evaluate.ovvis", "Open-vocabulary video instance segmentation feature protocol (CLIP-VIS; YouTube-VIS AP)."),
    "ovd": ("declip.evaluate.ovd", "Open-vocabulary detection: trained F-ViT-style detector or training-free box classification."),
    "ovss-train": ("declip.evaluate.ovss_train", "Train the OVSS cost-aggregation head (CAT-Seg recipe) for one variant."),
    "ovss": ("declip.evaluate.ovss", "Open-vocabulary segmentation with the variant's trained head (mIoU, seen/unseen)."),
}


def _common(p) -> None:
    p.add_argument("--variant", required=True, help="Variant name (a key of variant_presets), e.g. clip, declip.")
    p.add_argument("--checkpoint", default=None,
                   help="CLIP weights; default: student.checkpoint for `clip`, "
                        "else results/distill/<variant>/model.pt.")
    p.add_argument("--data", default=None, help="Dataset root; default: the `root` of the configured dataset.")
    p.add_argument("--out", required=True, help="metrics.json to write.")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice).")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1 ...")


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="family", required=True, metavar="FAMILY")
    for name, (_, help_text) in SUBVERBS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        _common(p)
        if name == "regionclf":
            p.add_argument("--dataset", default=None, help="A key of `datasets`; default evaluate.regionclf.dataset.")
        elif name == "tfseg":
            p.add_argument("--benchmark", "--dataset", dest="benchmark", default=None,
                           help="A key of `datasets` (one of evaluate.tfseg.benchmarks); "
                                "needed when several are configured.")
            p.add_argument("--save-pred", default=None, metavar="DIR",
                           help="Also write one index PNG per image (named like its ground truth) into DIR.")
        elif name == "ovss":
            p.add_argument("--benchmark", "--dataset", dest="benchmark", default=None,
                           help="A key of `datasets` (one of evaluate.ovss.benchmarks); needed when several are configured.")
            p.add_argument("--head", required=True, help="The trained head (results/ovss/<variant>/head.pt).")
            p.add_argument("--save-pred", default=None, metavar="DIR",
                           help="Also write one index PNG per image (named like its ground truth) into DIR.")
        elif name == "ov3d":
            p.add_argument("--host", default="openmask3d", help="Host pipeline: openmask3d or open3dis.")
            p.add_argument("--mode", default="dense",
                           help="crops (image tower on multi-level crops) or dense (mask-pool the dense map).")
        elif name == "ov6dpe":
            p.add_argument("--dataset", default=None, help="A key of `datasets` (BOP format with a pair list); "
                                                           "default evaluate.ov6dpe.dataset.")
            p.add_argument("--mask", default="oracle", help="oracle (GT visible masks) or text (prompt similarity).")
        elif name == "ovvis":
            p.add_argument("--benchmark", "--dataset", dest="benchmark", default=None,
                           help="A key of `datasets` (one of evaluate.ovvis.benchmarks); needed when several are configured.")
            p.add_argument("--tracks", default="oracle",
                           help="oracle (GT tracks) or a key of the dataset's `proposals` (class-agnostic tracks file).")
        elif name == "ovd":
            p.add_argument("--dataset", default=None, help="A key of `datasets` with boxes; default evaluate.ovd.dataset.")
            p.add_argument("--mode", default="detector",
                           help="detector (the trained detector, needs --detector) or boxclf (training-free).")
            p.add_argument("--detector", default=None, help="Detector weights of `declip detector` (mode detector).")


def run(args, cfg) -> dict:
    import importlib

    if "variant_presets" in cfg:  # a full config (manual use): resolve `method` for the variant, as jobs do
        from declip.config import variant_method

        cfg = {**cfg, "method": variant_method(cfg, args.variant)}
    module = importlib.import_module(SUBVERBS[args.family][0])
    return module.main(args, cfg)
