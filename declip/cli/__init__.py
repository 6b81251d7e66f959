"""`declip <verb>`: the only entry point the workflow rules call.

Each verb lives in `declip/cli/<verb>.py` with `add_arguments(parser)` and `run(args, cfg) -> dict|None`.
Verb modules import heavy libraries inside `run`, so `declip --help` stays fast. A verb returns
what the tracking layer records: {"metrics": {name: float}, "artifacts": [paths],
"step_metrics": path-to-jsonl} (every item optional).

Rules pass `--job JSON` (from `declip.config.job_spec`): the resolved config slice and the tracking
tags. Used by hand, verbs read config.yaml plus any `--configfile`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time

from declip.errors import UserFacingError

VERBS = {
    "dataset": "Build a dataset: synthesise the mini worlds, or download and verify full-scale files.",
    "pretrain": "Pretrain the mini preset's tiny CLIP contrastively on the synthetic captions.",
    "features": "Extract DeCLIP dense features (content map and context tokens) to an .npz file.",
    "teachers": "Extract the teacher cache (VFM tokens, SD affinities) of a dataset once, resumably.",
    "distill": "Distil one variant (DeCLIP and its ablations) into an open_clip checkpoint.",
    "detector": "Train the F-ViT-style open-vocabulary detector of one variant on base classes (frozen backbone).",
    "bench": "Benchmarks that print figures (e.g. `declip bench distill`).",
    "evaluate": "Run one task family's feature protocol on one benchmark and variant.",
    "score": "Score predictions in a benchmark's official formats (semseg, scannet200, bop, ytvis, ovcoco, lvis).",
    "tables": "Render the paper's tables from metrics files.",
    "figures": "Draw the affinity and segmentation figures for a variant.",
    "affinity": "Patch-affinity ROC AUC of a teacher or the original CLIP against GT masks (mini teacher quality).",
    "claims": "The claims table: the papers' qualitative claims tested on the configured world over seeds.",
    "track": "Tracking upkeep: `declip track sync` uploads job records a tracking server missed.",
}

log = logging.getLogger("declip")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="declip", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, help_text in VERBS.items():
        module = importlib.import_module(f"declip.cli.{verb}")
        p = sub.add_parser(verb, help=help_text, description=help_text)
        p.add_argument("--job", default=None, help="JSON job spec written by the workflow (config slice + tracking tags).")
        p.add_argument("--configfile", action="append", default=[], help="Extra config file(s) over config.yaml (manual use).")
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def _version() -> str:
    from declip import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the `declip` command: a job of a local run goes to the warm job server when one is up
        from declip.cli.job_server import run_remote

        code = run_remote(sys.argv)
        if code is not None:
            return code
        argv = sys.argv[1:]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    args = build_parser().parse_args(argv)
    if not sys.stderr.isatty():
        # Job logs are files: a progress line every 10 s, not one per step.
        os.environ.setdefault("TQDM_MININTERVAL", "10")
    from declip import config as config_mod

    job = json.loads(args.job) if args.job else None
    try:
        cfg = job["config"] if job else config_mod.load(*args.configfile)
    except config_mod.ConfigError as e:
        print(f"declip: {e}", file=sys.stderr)
        return 2
    if getattr(args, "threads", None):  # every compute verb's --threads (the rule's thread count)
        import torch

        torch.set_num_threads(int(args.threads))
        # Same commit, config and thread count -> bit-identical outputs: deterministic kernels where torch
        # has them (warn, not fail, where it has none); cuBLAS needs a fixed workspace for that.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    start = time.time()
    try:
        result = args._module.run(args, cfg) or {}
    except UserFacingError as e:
        _track(job, {}, start, "FAILED")
        print(f"declip {args.verb}: error: {e}", file=sys.stderr)
        return 1
    except BaseException:
        _track(job, {}, start, "FAILED")
        raise
    _track(job, result, start, "FINISHED")
    return 0


def _track(job: dict | None, result: dict, start: float, status: str) -> None:
    if job is not None:
        from declip import tracking

        tracking.record_job(job, result, seconds=time.time() - start, status=status)
