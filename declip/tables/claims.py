"""The claims table: the papers' qualitative claims that the configured world can test, over seeds.

Each claim compares two variants (or one variant against a sweep) on the metric of the paper's evidence:
region classification (`region` = mean of the `rois` thing and stuff top-1 mAcc, the paper's columns) or
training-free segmentation (`tfseg` = mean mIoU over the configured benchmarks). A claim whose numbers
are not in shared/docs is judged on region classification, the paper's analysis metric (protocols.md
section 1); the other metric is always shown as a secondary verdict. Paper evidence below is quoted from
shared/docs/protocols.md and method.md only.

Verdict (rule fixed before any result was seen): per variant the values over its seeds (`seeds`
for `seed_variants`, else the single run); spread = the largest max-min range over seeds of the two
variants, or, for a variant run with one seed, the largest range of any seed variant on that metric
(the pooled seed noise). |mean difference| <= spread -> inconclusive; else agrees / disagrees with the
claimed direction. `near_best` claims agree when the variant is within the spread of the sweep's best.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from declip.config import canonical_variant, split_seed
from declip.tables.registry import AVG, REGIONCLF, TFSEG, Metric
from declip.tables.render import MINI_NOTE, MetricsStore, _atomic_write, discover_layout, metric_value, write_csv

REGION, SEG = "region", "tfseg"
METRIC_LABELS = {REGION: "region clf. (rois thing/stuff top-1 mean)", SEG: "TF-OVSS mIoU (mean over benchmarks)"}


@dataclass(frozen=True)
class Claim:
    id: str
    text: str
    better: str  # the variant claimed better (near_best: the variant claimed near the sweep's best)
    worse: tuple[str, ...]  # the variant claimed worse (near_best: the whole sweep)
    metric: str  # the paper evidence's metric: REGION or SEG
    paper: str
    kind: str = "better"  # better | near_best


_T1 = "CVPR Table 1, protocols.md section 1"
_NONE = "no numbers in shared/docs"
CLAIMS: tuple[Claim, ...] = (
    Claim("declip_gt_clipself", "DeCLIP (CVPR recipe) beats CLIPSelf on region classification", "declip_cvpr", ("clipself",), REGION,
          "thing/stuff top-1 mAcc: DeCLIP with DINOv2-B 77.2/52.5 (Table 6) vs CLIPSelf 69.5/44.6 (" + _T1 + ")"),
    Claim("clipself_gt_clip", "CLIPSelf beats the original CLIP on region classification", "clipself", ("clip",), REGION,
          f"CLIPSelf 69.5/44.6 ({_T1}); the CLIP row is not in shared/docs (CLIPSelf's premise)"),
    Claim("declip_gt_clip_seg", "DeCLIP beats the original CLIP on training-free segmentation", "declip_cvpr", ("clip",), SEG,
          "TF-OVSS average mIoU: DeCLIP 41.9 (CVPR Table 5) vs CLIP 14.1 (peers, protocols.md section 2)"),
    Claim("journal_gt_cvpr_seg", "The journal recipe beats the CVPR recipe on training-free segmentation", "declip", ("declip_cvpr",), SEG,
          "TF-OVSS average mIoU: journal 44.1 vs CVPR 41.9 (protocols.md section 2)"),
    Claim("decoupled_gt_coupled", "Decoupled beats coupled distillation", "declip", ("coupled",), REGION,
          f"thing/stuff top-1 mAcc: DeCLIP 75.0/51.8 vs coupled 65.6/41.3 ({_T1}, SAM-B teacher)"),
    Claim("clipself_gt_coupled", "Coupling both losses on one feature falls below CLIPSelf", "clipself", ("coupled",), REGION,
          f"thing/stuff top-1 mAcc: CLIPSelf 69.5/44.6 vs coupled 65.6/41.3 ({_T1})"),
    Claim("sdgsc_helps", "SD-GSC (SD self-attention sharpening the VFM affinity) helps", "declip", ("no_sdgsc",), REGION,
          f"{_NONE}; a journal component kept in the default (method.md section 4)"),
    Claim("rcc_helps", "The Region Correlation Constraint helps", "declip", ("no_rcc",), REGION,
          f"{_NONE}; a journal component kept in the default (method.md section 3)"),
    Claim("lambda_near_best", "lambda = 0.25 is near the best of the lambda sweep", "declip",
          ("lambda_0.1", "lambda_0.2", "lambda_0.3", "lambda_0.5", "lambda_1.0"), REGION,
          f"{_NONE}; the paper's chosen value (method.md section 5)", kind="near_best"),
    Claim("dinov2_gt_sam", "DINOv2 is a better context teacher than SAM", "vfm_dinov2_b", ("vfm_sam_b",), REGION,
          f"thing/stuff top-1 mAcc: DINOv2-B 77.2/52.5 (Table 6) vs SAM-B 75.0/51.8 ({_T1})"),
    Claim("dinov2_gt_dino", "DINOv2 is a better context teacher than DINO (B/8)", "vfm_dinov2_b", ("vfm_dino_b8",), REGION,
          f"{_NONE}; DINOv2 is the paper's default teacher (method.md section 1)"),
    Claim("dinov2_gt_dino16", "DINOv2 is a better context teacher than DINO (B/16)", "vfm_dinov2_b", ("vfm_dino_b16",), REGION,
          f"{_NONE}; DINOv2 is the paper's default teacher (method.md section 1)"),
    Claim("q_gt_k", "Context features from Q (q-q) beat K (k-k)", "context_q", ("context_k",), REGION,
          f"{_NONE}; q-q is the paper's choice (method.md sections 2, 6)"),
    Claim("q_gt_qk", "Context features from Q (q-q) beat Q and K (csa)", "context_q", ("context_qk",), REGION,
          f"{_NONE}; q-q is the paper's choice (method.md sections 2, 6)"),
)


def _metrics(layout) -> dict[str, list[Metric]]:
    return {REGION: [Metric(REGIONCLF, "rois.thing_top1"), Metric(REGIONCLF, "rois.stuff_top1")],
            SEG: [Metric(TFSEG, "mIoU", AVG)]}


def runs_of(cfg: dict, variant: str) -> list[str]:
    """The metrics folders of a variant: itself, plus its seed runs (through its canonical recipe)."""
    base = canonical_variant(cfg, variant)
    if base not in cfg.get("seed_variants", []) and variant not in cfg.get("seed_variants", []):
        return [variant]
    name = variant if variant in cfg["seed_variants"] else base
    return [variant] + [f"{name}-seed{s}" for s in cfg["seeds"] if s != cfg["seed"]]


def _value(store, layout, metrics: list[Metric], run: str) -> float | None:
    vals = [metric_value(store, layout, m, run) for m in metrics]
    return sum(vals) / len(vals) if vals and all(v is not None for v in vals) else None


def collect(cfg: dict, store: MetricsStore, layout) -> dict[tuple[str, str], list[float] | None]:
    """(variant, metric) -> per-seed values, None when any run lacks its metrics (nothing computed)."""
    mets = _metrics(layout)
    out: dict[tuple[str, str], list[float] | None] = {}
    variants = {c.better for c in CLAIMS} | {w for c in CLAIMS for w in c.worse}
    for v in sorted(variants):
        for key, metrics in mets.items():
            vals = [_value(store, layout, metrics, r) for r in runs_of(cfg, v)]
            out[(v, key)] = None if any(x is None for x in vals) else vals
    return out


def _spread(values: list[float]) -> float:
    return max(values) - min(values)


def pooled_spread(cfg: dict, store: MetricsStore, layout, metric: str) -> float | None:
    """The largest seed range of any seed variant on `metric` (the noise of a single-seed comparison)."""
    spreads = []
    for v in cfg.get("seed_variants", []):
        vals = [_value(store, layout, _metrics(layout)[metric], r) for r in runs_of(cfg, v)]
        if len(vals) > 1 and all(x is not None for x in vals):
            spreads.append(_spread(vals))
    return max(spreads) if spreads else None


def verdict(claim: Claim, data: dict, metric: str, pooled: float | None) -> dict:
    """Means, difference, spread and verdict of one claim on one metric (empty when not computed)."""
    names = (claim.better,) + claim.worse
    series = {n: data.get((n, metric)) for n in names}
    if any(v is None for v in series.values()):
        missing = [n for n, v in series.items() if v is None]
        return {"verdict": "not computed", "why": f"no metrics for {', '.join(missing)}"}
    single = any(len(v) < 2 for v in series.values())
    own = max((_spread(v) for v in series.values() if len(v) > 1), default=0.0)
    if single and pooled is None:
        return {"verdict": "not computed", "why": "no seed spread: run the seed variants"}
    spread = max(own, pooled) if single else own
    mean = {n: sum(v) / len(v) for n, v in series.items()}
    if claim.kind == "near_best":
        best = max(mean, key=mean.get)
        diff = mean[claim.better] - mean[best]  # <= 0
        ok = -diff <= spread
        return {"a": mean[claim.better], "b": mean[best], "b_name": best, "diff": diff, "spread": spread,
                "seeds": {n: v for n, v in series.items()}, "verdict": "agrees" if ok else "disagrees",
                "pooled": single}
    worse = claim.worse[0]
    diff = mean[claim.better] - mean[worse]
    v = "inconclusive" if abs(diff) <= spread else ("agrees" if diff > 0 else "disagrees")
    return {"a": mean[claim.better], "b": mean[worse], "b_name": worse, "diff": diff, "spread": spread,
            "seeds": series, "verdict": v, "pooled": single}


def _fmt_seeds(vals: list[float] | None) -> str:
    return "" if not vals else "/".join(f"{x:.1f}" for x in vals)


def claims_records(cfg: dict, metrics_root: str | Path) -> list[dict]:
    store = MetricsStore(metrics_root)
    layout = discover_layout(store, cfg)
    data = collect(cfg, store, layout)
    pooled = {m: pooled_spread(cfg, store, layout, m) for m in (REGION, SEG)}
    records = []
    for c in CLAIMS:
        other = SEG if c.metric == REGION else REGION
        main, sec = verdict(c, data, c.metric, pooled[c.metric]), verdict(c, data, other, pooled[other])
        seeds = main.get("seeds", {})
        records.append({
            "claim": c.text, "id": c.id, "paper_evidence": c.paper, "metric": METRIC_LABELS[c.metric],
            "a": c.better, "b": main.get("b_name", c.worse[0] if len(c.worse) == 1 else "best of " + ", ".join(c.worse)),
            "mini_a": main.get("a"), "mini_b": main.get("b"),
            "mini_a_seeds": _fmt_seeds(seeds.get(c.better)), "mini_b_seeds": _fmt_seeds(seeds.get(main.get("b_name", ""))),
            "diff": main.get("diff"), "spread": main.get("spread"),
            "spread_source": ("pooled over seed variants" if main.get("pooled") else "the two variants' seeds") if "spread" in main else main.get("why"),
            "verdict": main["verdict"],
            "secondary_metric": METRIC_LABELS[other], "secondary_a": sec.get("a"), "secondary_b": sec.get("b"),
            "secondary_verdict": sec["verdict"],
        })
    return records


CSV_HEADER = ["id", "claim", "paper_evidence", "metric", "a", "b", "mini_a", "mini_b", "mini_a_seeds", "mini_b_seeds",
              "diff", "spread", "spread_source", "verdict", "secondary_metric", "secondary_a", "secondary_b", "secondary_verdict"]


def _num(v, sign: bool = False) -> str:
    return "" if v is None else (f"{v:+.1f}" if sign else f"{v:.1f}")


def claims_markdown(records: list[dict], preset: str) -> str:
    lines = ["# Claims of the papers tested on this world", ""]
    if preset == "mini":
        lines += [MINI_NOTE, ""]
    lines += ["| claim | paper evidence | metric | A | B | A (seeds) | B (seeds) | A-B | spread | verdict | other metric |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['claim']} | {r['paper_evidence']} | {r['metric']} | {r['a']} {_num(r['mini_a'])} | "
                     f"{r['b']} {_num(r['mini_b'])} | {r['mini_a_seeds']} | {r['mini_b_seeds']} | {_num(r['diff'], True)} | "
                     f"{_num(r['spread'])} | **{r['verdict']}** | {r['secondary_verdict']} ({_num(r['secondary_a'])} vs "
                     f"{_num(r['secondary_b'])}) |")
    counts = {v: sum(r["verdict"] == v for r in records) for v in ("agrees", "disagrees", "inconclusive", "not computed")}
    lines += ["", "Summary: " + ", ".join(f"{n} {v}" for v, n in counts.items() if n), "",
              "Verdict: |A-B| within the seed spread (largest max-min range over seeds of A and B; pooled over the seed "
              "variants when one of them ran one seed) is inconclusive; otherwise the sign decides. `lambda near best` agrees "
              "when lambda = 0.25 is within the spread of the sweep's best. Rule and claims fixed in declip/tables/claims.py "
              "before any result was seen; the world and the teachers' objectives were never tuned per claim."]
    return "\n".join(lines) + "\n"


def teacher_records(teachers_dir: str | Path, clip_affinity: str | Path) -> list[dict]:
    """One row per pretrained teacher: objective, steps, seconds, patch-affinity AUC next to the CLIP's."""
    clip = json.loads(Path(clip_affinity).read_text())
    clip_best = max(r["auc"] for r in clip.values())
    rows = [{"model": f"CLIP ({src.removeprefix('clip:')})", "objective": "contrastive (declip pretrain)", "steps": None,
             "seconds": None, "cpu_seconds": None, "auc": r["auc"], "beats_clip": None} for src, r in clip.items()]
    for path in sorted(Path(teachers_dir).glob("*.json")):
        m = json.loads(path.read_text())
        rows.append({"model": m["teacher"], "objective": m["objective"], "steps": m["steps"], "seconds": m["seconds"],
                     "cpu_seconds": m.get("cpu_seconds"),
                     "auc": m["affinity"]["auc"], "beats_clip": m["affinity"]["auc"] > clip_best})
    return rows


def render_claims(cfg: dict, metrics_root, out_dir, teachers_dir=None, clip_affinity=None) -> list[Path]:
    out_dir = Path(out_dir)
    records = claims_records(cfg, metrics_root)
    write_csv(out_dir / "claims.csv", CSV_HEADER, records)
    _atomic_write(out_dir / "claims.md", claims_markdown(records, cfg.get("preset", "")))
    written = [out_dir / "claims.csv", out_dir / "claims.md"]
    if teachers_dir and clip_affinity:
        rows = teacher_records(teachers_dir, clip_affinity)
        header = ["model", "objective", "steps", "seconds", "cpu_seconds", "auc", "beats_clip"]
        write_csv(out_dir / "teachers.csv", header, rows)
        md = ["# Mini teachers: patch-affinity ROC AUC on held-out images (same vs different GT segment)", "",
              "| model | objective | steps | wall s | CPU s | AUC | beats the CLIP |", "|---|---|---|---|---|---|---|"]
        md += [f"| {r['model']} | {r['objective']} | {r['steps'] or ''} | {_num(r['seconds'])} | {_num(r['cpu_seconds'])} | {r['auc']:.3f} | "
               f"{'' if r['beats_clip'] is None else ('yes' if r['beats_clip'] else 'no')} |" for r in rows]
        md += ["", "AUC 0.5 = no object information. Teachers were pretrained without labels (mini.teachers in the schema); "
               "the CLIP rows are the original tiny CLIP's context tokens and dense map. Seconds were measured on the "
               "machine that ran the workflow (shared machines inflate them)."]
        _atomic_write(out_dir / "teachers.md", "\n".join(md) + "\n")
        written += [out_dir / "teachers.csv", out_dir / "teachers.md"]
    return written
