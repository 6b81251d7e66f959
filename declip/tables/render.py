"""Render the registry's tables from the metrics files that exist: CSV + Markdown per table.

A cell is filled only when a metrics file holds the number (or the paper prints it): nothing computed
means an empty cell, never a zero. Deltas are ours - paper, only where both exist.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from declip.errors import UserFacingError
from declip.tables.registry import (
    AVG,
    METRICS_PATHS,
    OV3D,
    OV3D_HOSTS,
    OV3D_MODES,
    OV6DPE,
    OV6DPE_MASKS,
    OVVIS,
    OVVIS_TRACKS,
    OVD,
    OVD_MODES,
    OVSS,
    OVSS_FIELDS,
    PAPER_OVSS_BENCHMARKS,
    PAPER_TFSEG_BENCHMARKS,
    REFERENCES,
    REGION_CLASSIFIERS,
    REGION_FIELDS,
    REGIONCLF,
    TABLES,
    TFSEG,
    Metric,
    Reference,
    TableSpec,
    get_table,
    references_for,
    select_rows,
)

MINI_NOTE = ("**Mini preset: these numbers come from a synthetic world (procedural shapes) and tiny models "
             "trained for minutes on a CPU.** They show that every step runs and how variants compare on that "
             "world; they are not estimates of the paper's numbers. Paper values and deltas are shown for "
             "orientation only.")
EMPTY_NOTE = "An empty cell means nothing was computed (no metrics file) or the paper gives no number."


@dataclass
class Layout:
    """What the run configured (or, failing that, what exists on disk): the axes of the tables."""

    preset: str
    variants: list[str]
    regionclf_dataset: str | None
    classifiers: list[str]
    benchmarks: list[str]
    hosts: list[str]
    modes: list[str]
    ov3d_variants: list[str] = field(default_factory=list)  # Table 2's row order
    ov6dpe_datasets: list[str] = field(default_factory=list)
    ov6dpe_masks: list[str] = field(default_factory=list)
    ov6dpe_variants: list[str] = field(default_factory=list)
    ovvis_benchmarks: list[str] = field(default_factory=list)
    ovvis_tracks: list[str] = field(default_factory=list)
    ovvis_variants: list[str] = field(default_factory=list)
    ovd_dataset: str | None = None
    ovd_modes: list[str] = field(default_factory=list)
    ovd_variants: list[str] = field(default_factory=list)
    ovss_benchmarks: list[str] = field(default_factory=list)
    ovss_backbone: str = "B"  # which CVPR Table 4 rows apply (evaluate.ovss.paper_backbone)


@dataclass
class Row:
    ids: dict[str, str]  # "variant" (+ "host", "mode" in Table 2)
    kind: str  # ours | baseline | paper
    values: dict[Metric, float | None] = field(default_factory=dict)
    refs: dict[Metric, Reference] = field(default_factory=dict)
    protocol: str = ""
    weights: str = ""  # released (the authors' checkpoint) | distilled (ours) | original (metrics.json options)
    options: str = ""  # the options that produced the row's numbers


class MetricsStore:
    """Reads metrics.json files under the metrics root once each."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._cache: dict[Path, dict | None] = {}

    def path(self, family: str, **parts: str) -> Path:
        return self.root / METRICS_PATHS[family].format(**parts)

    def load(self, family: str, **parts: str) -> dict | None:
        p = self.path(family, **parts)
        if p not in self._cache:
            try:
                self._cache[p] = json.loads(p.read_text()) if p.is_file() else None
            except json.JSONDecodeError as e:
                raise UserFacingError(f"metrics file {p} is not valid JSON ({e}); delete it and rerun its evaluate job") from e
        return self._cache[p]

    def subdirs(self, *parts: str) -> list[str]:
        d = self.root.joinpath(*parts)
        return sorted(p.name for p in d.iterdir() if p.is_dir()) if d.is_dir() else []


def _number(obj, dotted: str) -> float | None:
    """The finite number at a dotted path, else None (missing keys and NaN render as empty cells)."""
    for part in dotted.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return None
        obj = obj[part]
    if isinstance(obj, bool) or not isinstance(obj, (int, float)) or not math.isfinite(obj):
        return None
    return float(obj)


# ---------------------------------------------------------------- layout

def _ordered(found: list[str], preferred: tuple[str, ...] | list[str]) -> list[str]:
    return [x for x in preferred if x in found] + sorted(x for x in found if x not in preferred)


def discover_layout(store: MetricsStore, cfg: dict | None = None, preset: str | None = None,
                    regionclf_dataset: str | None = None, benchmarks: list[str] | None = None) -> Layout:
    """Axes from explicit arguments, else the config, else the metrics files on disk."""
    cfg = cfg or {}
    ev = cfg.get("evaluate", {})
    found_2d: set[str] = set()
    for ds in store.subdirs(REGIONCLF):
        found_2d.update(store.subdirs(REGIONCLF, ds))
    for fam in (TFSEG, OVSS):
        for b in store.subdirs(fam):
            found_2d.update(store.subdirs(fam, b))
    found_3d = {v for h in store.subdirs(OV3D) for m in store.subdirs(OV3D, h) for v in store.subdirs(OV3D, h, m)}
    preferred = list(dict.fromkeys(list(cfg.get("variants") or []) + list(cfg.get("tables", {}).get("table2_variants") or [])
                                   + list(cfg.get("tables", {}).get("ovvis_variants") or [])))
    # 2D tables: the configured variants (and their order) win, files of variants no longer configured
    # are stale. Table 2 also shows any other variant's 3D metrics (schema: tables.table2_variants).
    variants = preferred or sorted(found_2d)
    ov3d_variants = preferred + sorted(found_3d - set(preferred))

    datasets = store.subdirs(REGIONCLF)
    ds = regionclf_dataset or ev.get("regionclf", {}).get("dataset")
    if ds is None and len(datasets) > 1:
        raise UserFacingError(
            f"region-classification metrics exist for several datasets ({', '.join(datasets)}); "
            "pass --regionclf-dataset NAME (or a config with evaluate.regionclf.dataset)")
    ds = ds or (datasets[0] if datasets else None)

    classifiers = list(ev.get("regionclf", {}).get("classifiers") or [])
    if not classifiers and ds:
        keys: set[str] = set()
        for v in store.subdirs(REGIONCLF, ds):
            m = store.load(REGIONCLF, dataset=ds, variant=v) or {}
            keys.update(k for k, val in m.items() if isinstance(val, dict) and k != "chance" and "thing_top1" in val)
        classifiers = _ordered(sorted(keys), REGION_CLASSIFIERS)
    classifiers = classifiers or list(REGION_CLASSIFIERS)

    bench = list(benchmarks or ev.get("tfseg", {}).get("benchmarks") or [])
    bench = bench or _ordered(store.subdirs(TFSEG), tuple(PAPER_TFSEG_BENCHMARKS))

    ov = ev.get("ov3d", {})
    hosts = list(ov.get("hosts") or _ordered(store.subdirs(OV3D), OV3D_HOSTS))
    modes = list(ov.get("modes") or _ordered(sorted({m for h in hosts for m in store.subdirs(OV3D, h)}), OV3D_MODES))
    pose = ev.get("ov6dpe", {})
    pose_datasets = list(pose.get("datasets") or store.subdirs(OV6DPE))
    pose_masks = list(pose.get("masks") or _ordered(sorted({m for d in pose_datasets for m in store.subdirs(OV6DPE, d)}),
                                                    OV6DPE_MASKS))
    found_pose = {v for d in pose_datasets for m in pose_masks for v in store.subdirs(OV6DPE, d, m)}
    pose_variants = list(pose.get("variants") or []) or (preferred + sorted(found_pose - set(preferred)))
    vv = ev.get("ovvis", {})
    vbench = list(vv.get("benchmarks") or store.subdirs(OVVIS))
    vtracks = list(vv.get("tracks") or _ordered(sorted({t for b in vbench for t in store.subdirs(OVVIS, b)}), OVVIS_TRACKS))
    found_vis = {v for b in vbench for t in vtracks for v in store.subdirs(OVVIS, b, t)}
    ovd_dataset, ovd_modes, ovd_variants = _ovd_layout(store, cfg)
    oc = ev.get("ovss", {})
    ovss_bench = list(oc.get("benchmarks") or _ordered(store.subdirs(OVSS), tuple(PAPER_OVSS_BENCHMARKS)))
    return Layout(preset=preset or cfg.get("preset") or "unknown", variants=variants, regionclf_dataset=ds,
                  classifiers=classifiers, benchmarks=bench, hosts=hosts, modes=modes, ov3d_variants=ov3d_variants,
                  ov6dpe_datasets=pose_datasets, ov6dpe_masks=pose_masks, ov6dpe_variants=pose_variants,
                  ovvis_benchmarks=vbench, ovvis_tracks=vtracks,
                  ovvis_variants=preferred + sorted(found_vis - set(preferred)),
                  ovd_dataset=ovd_dataset, ovd_modes=ovd_modes, ovd_variants=ovd_variants,
                  ovss_benchmarks=ovss_bench, ovss_backbone=oc.get("paper_backbone") or "B")


def _ovd_layout(store: MetricsStore, cfg: dict) -> tuple[str | None, list[str], list[str]]:
    """Detection axes: the configured evaluation set, modes and `tables.ovd_variants`, else those on disk."""
    ovd = cfg.get("evaluate", {}).get("ovd", {})
    datasets = store.subdirs(OVD)
    ds = ovd.get("dataset") or (datasets[0] if len(datasets) == 1 else None)
    if ds is None and len(datasets) > 1:
        raise UserFacingError(f"detection metrics exist for several datasets ({', '.join(datasets)}); "
                              "pass a config with evaluate.ovd.dataset")
    modes = list(ovd.get("modes") or (_ordered(store.subdirs(OVD, ds), OVD_MODES) if ds else []))
    found = sorted({v for m in modes for v in store.subdirs(OVD, ds, m)}) if ds else []
    configured = list(cfg.get("tables", {}).get("ovd_variants") or [])
    return ds, modes, configured + [v for v in found if v not in configured]


def table_columns(spec: TableSpec, layout: Layout) -> list[Metric]:
    if spec.family == REGIONCLF:
        return [Metric(REGIONCLF, f"{c}.{f}") for c in layout.classifiers for f in REGION_FIELDS]
    if spec.family == TFSEG:
        return [Metric(TFSEG, "mIoU", b) for b in layout.benchmarks] + [Metric(TFSEG, "mIoU", AVG)]
    if spec.family == OVSS:
        return [Metric(OVSS, f, b) for b in layout.ovss_benchmarks for f in OVSS_FIELDS]
    return list(spec.columns)


def reference_applies(ref: Reference, layout: Layout) -> bool:
    """The paper's average covers its 8 benchmarks: comparable only over exactly those."""
    if ref.metric.family == TFSEG and ref.metric.benchmark == AVG:
        return set(layout.benchmarks) == set(PAPER_TFSEG_BENCHMARKS)
    if ref.metric.family == OVSS:  # CVPR Table 4 gives ViT-B and ViT-L rows: compare with the configured one
        return ref.host == layout.ovss_backbone
    return True


# ---------------------------------------------------------------- cell values

def metric_value(store: MetricsStore, layout: Layout, metric: Metric, variant: str,
                 host: str | None = None, mode: str | None = None, prefix: str | None = None) -> float | None:
    """One cell; `prefix` reads a reference entry of the same file (e.g. chance.thing_top1)."""
    fld = f"{prefix}.{metric.field.split('.')[-1]}" if prefix else metric.field
    if metric.family == REGIONCLF:
        if layout.regionclf_dataset is None:
            return None
        return _number(store.load(REGIONCLF, dataset=layout.regionclf_dataset, variant=variant), fld)
    if metric.family == OV3D:
        return _number(store.load(OV3D, host=host, mode=mode, variant=variant), fld)
    if metric.family == OV6DPE:  # groups of (dataset, mask) ride in the (host, mode) slots
        return _number(store.load(OV6DPE, dataset=host, mask=mode, variant=variant), fld)
    if metric.family == OVVIS:  # groups are (benchmark, track source)
        return _number(store.load(OVVIS, benchmark=host, tracks=mode, variant=variant), fld)
    if metric.family == OVD:
        if layout.ovd_dataset is None:
            return None
        return _number(store.load(OVD, dataset=layout.ovd_dataset, mode=mode, variant=variant), fld)
    if metric.family == OVSS:
        return _number(store.load(OVSS, benchmark=metric.benchmark, variant=variant), fld)
    if metric.benchmark == AVG:
        # The paper's avg column: mean over the benchmarks; undefined while any benchmark is missing.
        vals = [metric_value(store, layout, Metric(TFSEG, metric.field, b), variant) for b in layout.benchmarks]
        return sum(vals) / len(vals) if vals and all(v is not None for v in vals) else None
    return _number(store.load(TFSEG, benchmark=metric.benchmark, variant=variant), fld)


def _protocol(store: MetricsStore, layout: Layout, row: Row) -> str:
    families = sorted({m.family for m, v in row.values.items() if v is not None})
    if families == [OV3D]:
        m = store.load(OV3D, host=row.ids["host"], mode=row.ids["mode"], variant=row.ids["variant"]) or {}
        if m.get("protocol") == "host":
            return f"host: {row.ids['host']}"
        return f"feature protocol: ov3d ({row.ids['mode']})"
    if families == [OV6DPE]:
        return f"feature protocol: ov6dpe ({row.ids['mask']} masks)"
    if families == [OVVIS]:
        return f"feature protocol: ovvis ({row.ids['tracks']} tracks)"
    if families == [OVD]:
        m = store.load(OVD, dataset=layout.ovd_dataset, mode=row.ids["mode"], variant=row.ids["variant"]) or {}
        what = ("F-ViT-style detector trained on base classes" if row.ids["mode"] == "detector"
                else "training-free box classification")
        return f"{what} ({layout.ovd_dataset}, {m.get('scorer', 'ovcoco')} scorer)"
    parts = [f"regionclf ({layout.regionclf_dataset})" if f == REGIONCLF else f for f in families]
    return "feature protocol: " + " + ".join(parts)


OPTION_SKIP = ("weights", "checkpoint")


def _row_files(store: MetricsStore, layout: Layout, row: Row) -> dict[str, dict]:
    """family -> the metrics file behind the row (tfseg: its first benchmark file)."""
    v = row.ids["variant"]
    fams = {m.family for m, val in row.values.items() if val is not None}
    out = {}
    if REGIONCLF in fams and layout.regionclf_dataset:
        out[REGIONCLF] = store.load(REGIONCLF, dataset=layout.regionclf_dataset, variant=v)
    if TFSEG in fams:
        out[TFSEG] = next((f for b in layout.benchmarks if (f := store.load(TFSEG, benchmark=b, variant=v))), None)
    if OV3D in fams:
        out[OV3D] = store.load(OV3D, host=row.ids["host"], mode=row.ids["mode"], variant=v)
    return {k: f for k, f in out.items() if f}


def _options(store: MetricsStore, layout: Layout, row: Row) -> tuple[str, str]:
    """(weights, options) of a row from its metrics files' `options`: one `k=v` list when the families
    agree, else one per family; empty for files written before options were recorded."""
    opts = {fam: f.get("options") or {} for fam, f in _row_files(store, layout, row).items()}
    weights = "; ".join(dict.fromkeys(o["weights"] for o in opts.values() if o.get("weights")))
    shown = {fam: ", ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in o.items()
                            if k not in OPTION_SKIP) for fam, o in opts.items() if o}
    if len(set(shown.values())) <= 1:
        return weights, next(iter(shown.values()), "")
    return weights, "; ".join(f"{fam}: {text}" for fam, text in shown.items())


def build_rows(spec: TableSpec, layout: Layout, store: MetricsStore) -> tuple[list[Metric], list[Row]]:
    columns = table_columns(spec, layout)
    rows: list[Row] = []

    def refs(row_name: str, host: str | None = None) -> dict[Metric, Reference]:
        out = {}
        for m in columns:
            ref = references_for(m, row_name, host)
            if ref is not None and reference_applies(ref, layout):
                out[m] = ref
        return out

    if spec.family == OV3D:
        groups = [(h, md) for h in layout.hosts for md in layout.modes]
    elif spec.family == OV6DPE:
        groups = [(d, mk) for d in layout.ov6dpe_datasets for mk in layout.ov6dpe_masks]
    elif spec.family == OVVIS:
        groups = [(b, t) for b in layout.ovvis_benchmarks for t in layout.ovvis_tracks]
    elif spec.family == OVD:
        groups = [(None, md) for md in layout.ovd_modes]
    else:
        groups = [(None, None)]
    row_pool = {OV3D: layout.ov3d_variants, OV6DPE: layout.ov6dpe_variants, OVVIS: layout.ovvis_variants,
                OVD: layout.ovd_variants}.get(spec.family, layout.variants)
    variants = select_rows(spec.rows, row_pool)
    for host, mode in groups:
        if spec.family == OVD:
            ids = {"mode": mode}
        else:
            ids = dict(zip(_id_fields(spec)[:2], (host, mode))) if spec.family in (OV3D, OV6DPE, OVVIS) else {}
        if spec.baseline is not None:
            label, key = spec.baseline
            base = Row({**ids, "variant": label}, "baseline")
            for m in columns:
                base.values[m] = next((val for v in variants if (val := metric_value(
                    store, layout, m, v, host, mode, prefix=key)) is not None), None)
            if any(val is not None for val in base.values.values()):
                base.protocol = _protocol(store, layout, base)
                rows.append(base)
        for v in variants:
            row = Row({**ids, "variant": v}, "ours")
            row.values = {m: metric_value(store, layout, m, v, host, mode) for m in columns}
            if not any(val is not None for val in row.values.values()):
                continue  # no computation behind this variant in this table
            # OVD: the paper's numbers are the F-ViT detector's at one student scale (keyed by preset).
            # OVD: the paper's numbers are the F-ViT detector's at one student scale (keyed by preset);
            # OVSS: CVPR Table 4's rows of the configured backbone.
            key = {OVD: layout.preset if mode == "detector" else None, OVSS: layout.ovss_backbone}.get(spec.family, host)
            row.refs = refs(v, key)
            row.protocol = _protocol(store, layout, row)
            row.weights, row.options = _options(store, layout, row)
            rows.append(row)
    for peer in spec.peers:
        row = Row({"variant": f"{peer} (paper)"}, "paper", refs=refs(peer), protocol="paper")
        if row.refs:
            rows.append(row)
    if spec.family == "ablation":
        # The tfseg column is optional in ablations: shown only where some variant has it.
        columns = [m for m in columns if m.family != TFSEG or any(r.values.get(m) is not None for r in rows)]
    if spec.family == OVSS:
        # seen / unseen columns exist only where a vocabulary was held out.
        columns = [m for m in columns if m.field == "mIoU" or any(r.values.get(m) is not None for r in rows)]
    return columns, rows


# ---------------------------------------------------------------- output

def _id_fields(spec: TableSpec) -> list[str]:
    if spec.family == OV6DPE:
        return ["dataset", "mask", "variant"]
    if spec.family == OVVIS:
        return ["benchmark", "tracks", "variant"]
    if spec.family == OVD:
        return ["mode", "variant"]
    return ["host", "mode", "variant"] if spec.family == OV3D else ["variant"]


def _paper_columns(columns: list[Metric], layout: Layout) -> set[Metric]:
    """Metrics that get paper/delta columns: those with a published number that applies to this layout."""
    return {r.metric for r in REFERENCES if r.metric in columns and reference_applies(r, layout)}


def table_records(spec: TableSpec, layout: Layout, columns: list[Metric], rows: list[Row]) -> tuple[list[str], list[dict]]:
    """Header and records: metric, its paper value and delta (ours - paper), preset, protocol, source."""
    with_paper = _paper_columns(columns, layout)
    header = _id_fields(spec)
    for m in columns:
        header += [m.key] + ([f"{m.key}.paper", f"{m.key}.delta"] if m in with_paper else [])
    header += ["preset", "protocol", "weights", "options", "source"]
    records = []
    for row in rows:
        rec: dict = dict(row.ids)
        for m in columns:
            ours = row.values.get(m)
            ref = row.refs.get(m)
            rec[m.key] = ours
            if m in with_paper:
                rec[f"{m.key}.paper"] = ref.value if ref else None
                # ours - paper (positive = we are higher), left empty unless both numbers exist.
                rec[f"{m.key}.delta"] = ours - ref.value if (ref and ours is not None) else None
        rec["preset"] = layout.preset if row.kind != "paper" else None
        rec["protocol"] = row.protocol
        rec["weights"] = row.weights or None
        rec["options"] = row.options or None
        rec["source"] = "; ".join(dict.fromkeys(r.source for r in row.refs.values())) or None
        records.append(rec)
    return header, records


def _csv_cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(round(v, 4))
    return str(v)


def _md_cell(key: str, v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:+.1f}" if key.endswith(".delta") else f"{v:.1f}"
    return str(v).replace("|", "\\|")


def write_csv(path: Path, header: list[str], records: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for rec in records:
        w.writerow([_csv_cell(rec.get(h)) for h in header])
    _atomic_write(path, buf.getvalue())


def _md_header(key: str, columns: list[Metric]) -> str:
    for m in columns:
        if key == m.key:
            return m.label
        if key == f"{m.key}.paper":
            return "paper"
        if key == f"{m.key}.delta":
            return "Δ"
    return key


def markdown(spec: TableSpec, layout: Layout, columns: list[Metric], header: list[str], records: list[dict],
             metrics_root: Path) -> str:
    lines = [f"# {spec.title}", "", f"Table `{spec.id}`; preset `{layout.preset}`; metrics from `{metrics_root}`."]
    if spec.family in (REGIONCLF, "ablation") and layout.regionclf_dataset:
        lines[-1] += f" Region classification on `{layout.regionclf_dataset}`."
    if spec.family == OVD and layout.ovd_dataset:
        lines[-1] += f" Detection evaluated on `{layout.ovd_dataset}`."
    lines.append("")
    if layout.preset == "mini":
        lines += [f"> {MINI_NOTE}", ""]
    if not any(r.get("protocol") != "paper" for r in records):
        wanted = ", ".join(spec.rows) if spec.rows else "any variant"
        lines += [f"> **No metrics yet**: no metrics file under `{metrics_root}` has a number for this table "
                  f"(rows: {wanted}). Run the workflow's evaluate steps first.", ""]
    lines += ["| " + " | ".join(_md_header(h, columns) for h in header) + " |",
              "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_md_cell(h, rec.get(h)) for h in header) + " |" for rec in records]
    lines += ["", f"- {EMPTY_NOTE}"]
    if any(h.endswith(".delta") for h in header):
        lines.append("- Δ = ours - paper (percentage points); paper values from the table named in `source`.")
    lines.append("- weights: `released` = the authors' released checkpoint evaluated as released (no distillation "
                 "here), `distilled` = distilled by this suite, `original` = the CLIP itself; options: the "
                 "resolved settings that produced the row (metrics.json `options`).")
    lines += [f"- {n}" for n in spec.notes]
    return "\n".join(lines) + "\n"


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def render_table(spec: TableSpec, layout: Layout, store: MetricsStore, csv_path: Path, md_path: Path) -> list[Path]:
    columns, rows = build_rows(spec, layout, store)
    header, records = table_records(spec, layout, columns, rows)
    write_csv(csv_path, header, records)
    _atomic_write(md_path, markdown(spec, layout, columns, header, records, store.root))
    return [csv_path, md_path]


def render_tables(metrics_root: str | Path, out_dir: str | Path, table_ids: list[str] | None = None,
                  table2_out: str | Path | None = None, cfg: dict | None = None, preset: str | None = None,
                  regionclf_dataset: str | None = None, benchmarks: list[str] | None = None) -> list[Path]:
    """Render the chosen tables (default: all); Table 2's CSV goes to `table2_out` (default out_dir/../table2.csv)."""
    out_dir = Path(out_dir)
    store = MetricsStore(metrics_root)
    layout = discover_layout(store, cfg, preset, regionclf_dataset, benchmarks)
    written: list[Path] = []
    for tid in table_ids or list(TABLES):
        spec = get_table(tid)
        csv_path = Path(table2_out) if tid == "table2" and table2_out else (
            out_dir.parent / "table2.csv" if tid == "table2" else out_dir / f"{tid}.csv")
        written += render_table(spec, layout, store, csv_path, out_dir / f"{tid}.md")
    return written
