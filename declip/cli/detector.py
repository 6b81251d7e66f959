"""`declip detector`: train the F-ViT-style open-vocabulary detector of one variant on base classes
(declip.evaluate.ovd.train; the variant's CLIP tower stays frozen).

Under torchrun (WORLD_SIZE > 1, rule resources gpu > 1) every process runs this verb and takes its share
of each step's batch (DistributedDataParallel), as `declip distill` does.
"""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--variant", required=True, help="A name of `variant_presets` (e.g. clip, clipself, declip).")
    parser.add_argument("--checkpoint", default=None,
                        help="CLIP weights; default: student.checkpoint for `clip`, else results/distill/<variant>/model.pt.")
    parser.add_argument("--out", required=True, help="Detector weights to write, e.g. results/ovd/<variant>/detector.pt.")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (the rule passes {threads}).")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda.")


def run(args, cfg) -> dict:
    from declip.evaluate.ovd import train

    if "variant_presets" in cfg:  # a full config (manual use): resolve `method` for the variant, as jobs do
        from declip.config import variant_method

        cfg = {**cfg, "method": variant_method(cfg, args.variant)}
    return train(cfg, args.variant, args.checkpoint, args.out, args.device)
