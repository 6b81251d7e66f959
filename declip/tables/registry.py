"""The paper's tables, declared once as data: layout, metric paths and the published reference numbers.

Every reference number here appears verbatim in shared/docs/protocols.md; its `source` names the
paper table it comes from. A cell the paper does not give has no Reference, so it renders empty.
Rendering (reading metrics files, deltas, CSV/Markdown) lives in `declip.tables.render`.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

# Families whose metrics files the tables read (docs/interfaces.md "Evaluation").
REGIONCLF, TFSEG, OV3D = "regionclf", "tfseg", "ov3d"
OV6DPE = "ov6dpe"
OVVIS = "ovvis"
OVD = "ovd"
OVSS = "ovss"  # trained-head open-vocabulary segmentation (protocols.md section 4)

# Path of one metrics file under the metrics root, per family (docs/interfaces.md "Evaluation").
METRICS_PATHS = {
    REGIONCLF: "regionclf/{dataset}/{variant}/metrics.json",
    TFSEG: "tfseg/{benchmark}/{variant}/metrics.json",
    OV3D: "ov3d/{host}/{mode}/{variant}/metrics.json",
    OV6DPE: "ov6dpe/{dataset}/{mask}/{variant}/metrics.json",
    OVVIS: "ovvis/{benchmark}/{tracks}/{variant}/metrics.json",
    OVD: "ovd/{dataset}/{mode}/{variant}/metrics.json",
    OVSS: "ovss/{benchmark}/{variant}/metrics.json",
}

REGION_FIELDS = ("thing_top1", "thing_top5", "stuff_top1", "stuff_top5")
REGION_CLASSIFIERS = ("rois", "maskpool", "crops")  # CLIPSelf protocol, protocols.md section 1
OV3D_FIELDS = ("AP", "AP50", "AP25", "AP_head", "AP_common", "AP_tail")  # journal Table 2 columns
OV3D_HOSTS = ("openmask3d", "open3dis")
OV3D_MODES = ("crops", "dense")
OV6DPE_FIELDS = ("AR", "AR_VSD", "AR_MSSD", "AR_MSPD", "ADDS")  # BOP19 AR, its parts, ADD(S)-0.1d recall
OV6DPE_MASKS = ("oracle", "text")
OVVIS_FIELDS = ("AP", "AP50", "AP75", "AR1", "AR10", "AP_base", "AP_novel")  # YouTube-VIS API + LV-VIS split
OVVIS_TRACKS = ("oracle",)  # track sources shown first; proposal files follow by name
# OV-COCO (declip.metrics.ovcoco) then OV-LVIS (declip.metrics.lvis_ap) columns; a run fills one group.
OVD_FIELDS = ("AP50_novel", "AP50_base", "AP50_all", "APr", "APc", "APf", "AP")
OVD_MODES = ("detector", "boxclf")

# The 8 benchmarks of CVPR Table 5 in the paper's order: config key -> the paper's column name.
PAPER_TFSEG_BENCHMARKS = {
    "voc21": "VOC21",
    "context60": "Context60",
    "coco_object": "COCO-Object",
    "voc20": "VOC20",
    "cityscapes": "Cityscapes",
    "context59": "Context59",
    "ade150": "ADE20K-150",
    "cocostuff171": "COCO-Stuff-171",
}
# CVPR Table 4's 6 benchmarks in the paper's order: config key -> the paper's column name.
PAPER_OVSS_BENCHMARKS = {
    "ade847": "A-847",
    "context459": "PC-459",
    "ade150": "A-150",
    "context59": "PC-59",
    "voc20": "VOC-20",
    "voc21": "VOC-21",
}
OVSS_FIELDS = ("mIoU", "seen_mIoU", "unseen_mIoU")  # seen/unseen only where a vocabulary is held out (mini)
AVG = "avg"  # pseudo-benchmark: mean mIoU over the table's benchmarks (the paper's "avg" column)


@dataclass(frozen=True)
class Metric:
    """One number of a metrics file: family, dotted path inside metrics.json, tfseg benchmark."""

    family: str
    field: str
    benchmark: str | None = None  # tfseg / ovss: a `datasets` key (tfseg also AVG)

    @property
    def key(self) -> str:
        """Stable column key used in the CSV header."""
        if self.family in (TFSEG, OVSS):
            return f"{self.benchmark}.{self.field}"
        return self.field

    @property
    def label(self) -> str:
        """Human column name used in the Markdown header."""
        if self.family == OV6DPE and self.field == "ADDS":
            return "ADD(S)-0.1d"
        if self.family == TFSEG:
            name = "avg" if self.benchmark == AVG else PAPER_TFSEG_BENCHMARKS.get(self.benchmark, self.benchmark)
            return f"{name} mIoU"
        if self.family == OVSS:
            name = PAPER_OVSS_BENCHMARKS.get(self.benchmark, self.benchmark)
            return f"{name} {self.field.replace('_mIoU', ' mIoU')}"
        return self.field.replace("_top1", "@1").replace("_top5", "@5").replace(".", " ")


@dataclass(frozen=True)
class Reference:
    """A published number for one (metric, row) cell, with where it is printed."""

    metric: Metric
    row: str  # a variant name, or a peer method's name for reference-only rows
    value: float
    source: str
    host: str | None = None  # ov3d: the host the number was measured in; ovss: the backbone (B or L)


@dataclass(frozen=True)
class TableSpec:
    id: str
    title: str
    family: str  # the family of the rows' metrics; "ablation" mixes regionclf and tfseg
    rows: tuple[str, ...] | None  # variant names / fnmatch patterns in display order; None = every variant
    columns: tuple[Metric, ...] = ()  # fixed columns; regionclf/tfseg columns come from the config layout
    baseline: tuple[str, str] | None = None  # (label, key in metrics.json) of a reference row, e.g. chance
    peers: tuple[str, ...] = ()  # reference-only rows (other methods the paper compares with)
    notes: tuple[str, ...] = field(default_factory=tuple)


def _rc(classifier: str, fld: str) -> Metric:
    return Metric(REGIONCLF, f"{classifier}.{fld}")


def _tf(benchmark: str) -> Metric:
    return Metric(TFSEG, "mIoU", benchmark)


def _ov(fld: str) -> Metric:
    return Metric(OV3D, fld)


def _ovss_refs(backbone: str, variant: str, values: tuple[float, ...]) -> list[Reference]:
    return [Reference(Metric(OVSS, "mIoU", b), variant, v, _CVPR_T4, host=backbone)
            for b, v in zip(PAPER_OVSS_BENCHMARKS, values)]


_CVPR_T1 = "CVPR Table 1 (protocols.md section 1)"
_CVPR_T6 = "Table 6 (protocols.md section 1)"
_CVPR_T5 = "CVPR Table 5 (protocols.md section 2)"
_JOURNAL_AVG = "journal, TF-OVSS average (protocols.md section 2)"
# protocols.md lists the peers' averages after CVPR Table 5 and the journal average without naming the table.
_PEERS = "paper, TF-OVSS peers' averages (protocols.md section 2)"
_JOURNAL_T2 = "journal Table 2 (protocols.md section 5)"
_OVVIS_HEADLINE = "journal headline, OVIS, per a secondary source (protocols.md section 6)"
# The journal's video numbers are CLIP-VIS's full pipeline on OVIS: shown as reference-only rows.
_OVVIS_PEERS = {"CLIP-VIS (OVIS)": 18.5, "CLIP-VIS + DeCLIP (OVIS)": 22.2}
_CVPR_T2 = "CVPR Table 2 (protocols.md section 3)"
_CVPR_T4 = "CVPR Table 4 (protocols.md section 4)"


def _region_refs(variant: str, thing: float, stuff: float, source: str) -> list[Reference]:
    # The paper's region-classification columns are RoIAlign on the dense map = the `rois` classifier
    # (CLIPSelf protocol), thing / stuff top-1 mAcc.
    return [Reference(_rc("rois", "thing_top1"), variant, thing, source),
            Reference(_rc("rois", "stuff_top1"), variant, stuff, source)]


_TABLE5_DECLIP = dict(zip(PAPER_TFSEG_BENCHMARKS, (59.7, 35.3, 36.4, 85.0, 32.8, 39.2, 21.9, 25.3)))
_PEER_AVG = {"SCLIP": 38.2, "ClearCLIP": 38.1, "NACLIP": 39.4, "CLIP-DINOiser": 40.3,
                    "ProxyCLIP": 42.3, "Trident": 45.8}


def _ov3d_refs(host: str, variant: str, values: dict[str, float]) -> list[Reference]:
    return [Reference(_ov(k), variant, v, _JOURNAL_T2, host=host) for k, v in values.items()]


# CVPR Table 2: OV-COCO novel AP50 and OV-LVIS APr per (host + backbone, student scale).
_OVD_PAPER = {("F-ViT", "clipself", "paper-b16"): (37.6, 25.3), ("F-ViT", "clipself", "paper-l14"): (44.3, 34.9),
              ("F-ViT", "declip", "paper-b16"): (41.1, 26.8), ("F-ViT", "declip", "paper-l14"): (46.2, 37.2),
              ("OV-DQUO", "declip", "paper-b16"): (46.1, 31.0), ("OV-DQUO", "declip", "paper-l14"): (48.3, 41.5)}
_SCALE = {"paper-b16": "ViT-B/16", "paper-l14": "ViT-L/14"}
_BACKBONE = {"clipself": "CLIPSelf", "declip": "DeCLIP"}
OVD_PEERS = tuple(f"{host}+{_BACKBONE[v]} {_SCALE[p]}" for host, v, p in _OVD_PAPER)


def _ovd_refs() -> list[Reference]:
    """Reference-only peer rows for every preset, and on our F-ViT `detector` rows at the matching paper preset
    (`host` holds the preset: the paper's number depends on the student's scale)."""
    out = []
    for (host, variant, preset), (coco, lvis) in _OVD_PAPER.items():
        peer = f"{host}+{_BACKBONE[variant]} {_SCALE[preset]}"
        out += [Reference(Metric(OVD, "AP50_novel"), peer, coco, _CVPR_T2),
                Reference(Metric(OVD, "APr"), peer, lvis, _CVPR_T2)]
        if host == "F-ViT":
            out += [Reference(Metric(OVD, "AP50_novel"), variant, coco, _CVPR_T2, host=preset),
                    Reference(Metric(OVD, "APr"), variant, lvis, _CVPR_T2, host=preset)]
    return out


REFERENCES: tuple[Reference, ...] = tuple(
    # CVPR Table 1: CLIPSelf, the coupled ablation, DeCLIP with a SAM-B context teacher.
    _region_refs("clipself", 69.5, 44.6, _CVPR_T1)
    + _region_refs("coupled", 65.6, 41.3, _CVPR_T1)
    + _region_refs("vfm_sam_b", 75.0, 51.8, _CVPR_T1)
    # Table 6: the DINOv2-B context teacher.
    + _region_refs("vfm_dinov2_b", 77.2, 52.5, _CVPR_T6)
    # CVPR Table 5: the CVPR DeCLIP row over the 8 benchmarks and its average; journal average; peers.
    + [Reference(_tf(b), "declip_cvpr", v, _CVPR_T5) for b, v in _TABLE5_DECLIP.items()]
    + [Reference(_tf(AVG), "declip_cvpr", 41.9, _CVPR_T5),
       Reference(_tf(AVG), "declip", 44.1, _JOURNAL_AVG),
       Reference(_tf(AVG), "clip", 14.1, _PEERS)]
    + [Reference(_tf(AVG), peer, v, _PEERS) for peer, v in _PEER_AVG.items()]
    # Journal Table 2: "original" host = the `clip` variant, "+DeCLIP" = the `declip` variant.
    + _ov3d_refs("openmask3d", "clip", {"AP": 15.4, "AP50": 19.9, "AP25": 23.1,
                                        "AP_head": 17.1, "AP_common": 14.1, "AP_tail": 14.9})
    + _ov3d_refs("openmask3d", "declip", {"AP_tail": 18.9})
    + _ov3d_refs("open3dis", "clip", {"AP": 23.7, "AP_head": 27.8, "AP_common": 21.2, "AP_tail": 21.8})
    + _ov3d_refs("open3dis", "declip", {"AP_tail": 27.7})
    + [Reference(Metric(OVVIS, "AP"), peer, v, _OVVIS_HEADLINE) for peer, v in _OVVIS_PEERS.items()]
    + _ovd_refs()
    # CVPR Table 4: CAT-Seg with its original CLIP = `clip`, CAT-Seg + DeCLIP = `declip`; ViT-B and ViT-L.
    + _ovss_refs("B", "clip", (12.0, 19.0, 31.8, 57.5, 94.6, 77.3))
    + _ovss_refs("B", "declip", (15.3, 21.4, 36.3, 60.6, 96.6, 81.3))
    + _ovss_refs("L", "clip", (16.0, 23.8, 37.9, 63.3, 97.0, 82.5))
    + _ovss_refs("L", "declip", (17.6, 25.9, 40.7, 63.9, 97.7, 83.9))
)

_RC_ABLATION_COLUMNS = (_rc("rois", "thing_top1"), _rc("rois", "stuff_top1"),
                        _rc("maskpool", "thing_top1"), _rc("maskpool", "stuff_top1"), _tf(AVG))

_ROIS_NOTE = ("The paper's region-classification numbers are thing/stuff top-1 mean per-class accuracy of the "
              "`rois` classifier (RoIAlign 1x1 on the dense map, CLIPSelf protocol); `maskpool` and `crops` "
              "have no published numbers.")
_COUPLED_NOTE = ("CVPR Table 1's coupled row is the CVPR recipe (L2 context loss) with losses on one feature; "
                 "this suite's `coupled` variant couples the journal recipe (`declip` + coupled).")
_SAM_NOTE = ("CVPR Table 1's DeCLIP row (75.0/51.8) uses a SAM-B context teacher: it is shown on `vfm_sam_b` "
             "(the CVPR recipe with SAM-B), not on `declip_cvpr` (DINOv2-B teacher, same recipe as `vfm_dinov2_b`).")
_TFSEG_AVG_NOTE = ("The tfseg mIoU column is the mean over the configured benchmarks, computed only when the "
                   "variant has all of them.")

TABLES: dict[str, TableSpec] = {t.id: t for t in (
    TableSpec(
        "regionclf", "Region classification on COCO-Panoptic (CLIPSelf protocol), by variant", REGIONCLF,
        rows=None, baseline=("chance", "chance"),
        notes=(_ROIS_NOTE, _SAM_NOTE, _COUPLED_NOTE,
               "The `chance` row is the expected accuracy of a uniformly random classifier.")),
    TableSpec(
        "tfseg", "Training-free open-vocabulary semantic segmentation (mIoU), by variant", TFSEG,
        rows=None, peers=tuple(_PEER_AVG),
        notes=("Columns are the configured benchmarks (`evaluate.tfseg.benchmarks`) and their average; paper "
               "values appear only in columns of the paper's 8 benchmarks, and the paper average only when the "
               "configured benchmarks are exactly those 8.",
               "CVPR Table 5's DeCLIP row is shown on `declip_cvpr`; the journal average on `declip`; the CLIP "
               "peer average on `clip`.")),
    TableSpec(
        "abl_coupling", "Ablation: decoupled vs coupled distillation", "ablation",
        rows=("declip", "coupled", "declip_cvpr", "clipself"), columns=_RC_ABLATION_COLUMNS,
        notes=(_ROIS_NOTE, _COUPLED_NOTE, _TFSEG_AVG_NOTE)),
    TableSpec(
        "abl_sdgsc", "Ablation: SD-GSC on/off", "ablation",
        rows=("declip", "no_sdgsc"), columns=_RC_ABLATION_COLUMNS, notes=(_TFSEG_AVG_NOTE,)),
    TableSpec(
        "abl_rcc", "Ablation: Region Correlation Constraint on/off", "ablation",
        rows=("declip", "no_rcc"), columns=_RC_ABLATION_COLUMNS, notes=(_TFSEG_AVG_NOTE,)),
    TableSpec(
        "abl_lambda", "Ablation: context-loss weight lambda (declip = 0.25)", "ablation",
        rows=("lambda_*", "declip"), columns=_RC_ABLATION_COLUMNS, notes=(_TFSEG_AVG_NOTE,)),
    TableSpec(
        "abl_vfm", "Ablation: context teacher (VFM), CVPR recipe", "ablation",
        rows=("vfm_*",), columns=_RC_ABLATION_COLUMNS, notes=(_ROIS_NOTE, _SAM_NOTE, _TFSEG_AVG_NOTE)),
    TableSpec(
        "abl_context", "Ablation: projection forming X_context", "ablation",
        rows=("context_*",), columns=_RC_ABLATION_COLUMNS, notes=(_TFSEG_AVG_NOTE,)),
    TableSpec(
        "abl_blocks", "Ablation: number of trainable last blocks", "ablation",
        rows=("blocks_*",), columns=_RC_ABLATION_COLUMNS, notes=(_TFSEG_AVG_NOTE,)),
    TableSpec(
        "ov6dpe", "Open-vocabulary 6D pose estimation (Oryon protocol): BOP AR and ADD(S)-0.1d", OV6DPE,
        rows=None, columns=tuple(Metric(OV6DPE, f) for f in OV6DPE_FIELDS),
        notes=("The journal reports AR gains of +2.3 to +5.4 from replacing Oryon's CLIP with DeCLIP on REAL275 and "
               "Toyota-Light (protocols.md section 7); it gives no absolute numbers there, so no paper column: "
               "compare the `declip` row's AR with the `clip` row's.",
               "Ours: the feature protocol (dense features, oracle or text-similarity masks, mutual nearest "
               "neighbours, RANSAC over Kabsch fits), not Oryon's trained decoder; AR = mean of AR_VSD, AR_MSSD "
               "and AR_MSPD (BOP19), in percent.")),
    TableSpec(
        "ovvis", "Open-vocabulary video instance segmentation (CLIP-VIS feature protocol, YouTube-VIS AP)", OVVIS,
        rows=None, columns=tuple(Metric(OVVIS, f) for f in OVVIS_FIELDS), peers=tuple(_OVVIS_PEERS),
        notes=("Rows are benchmark x track source x variant: `oracle` tracks are the GT masks (the backbone alone); "
               "other sources are class-agnostic track proposals read from a results-format file (on the mini "
               "world, `imperfect`: GT tracks eroded/dilated, frames dropped, an identity switch, a distractor).",
               "The paper rows are CLIP-VIS's full pipeline (its own tracks and heads) on OVIS, as protocols.md "
               "reports them from a secondary source; the journal's other video numbers are not given there, "
               "so no other cell has a paper value.",
               "AP_base / AP_novel average over the categories of LV-VIS `partition` 0/1 and 2/3; empty where the "
               "benchmark has no partitions. Benchmarks without public GT (YouTube-VIS, OVIS val) are scored by "
               "their servers: their rows stay empty here.")),
    TableSpec(
        "ovd", "Open-vocabulary object detection (CVPR Table 2 family): novel / base AP50, by variant", OVD,
        rows=None, columns=tuple(Metric(OVD, f) for f in OVD_FIELDS), peers=OVD_PEERS,
        notes=("`detector` rows: the F-ViT-style detector (frozen variant backbone, simple pyramid, RPN, RoI head) "
               "trained on base classes only, scores ensembled with the open-vocabulary box score as F-ViT; "
               "`boxclf` rows: training-free classification of the ground-truth boxes (or a proposal file) by "
               "RoIAlign of the dense map, no detector trained.",
               "OV-COCO columns: AP50 at IoU 0.5 averaged over novel / base / all categories with ground truth "
               "(F-ViT coco_ov.py); OV-LVIS columns: LVISEval box AP, APr (rare = novel), APc, APf.",
               "Paper values are F-ViT+CLIPSelf / F-ViT+DeCLIP on our `clipself` / `declip` detector rows at the "
               "matching paper preset (B/16 or L/14), and reference-only rows for every backbone scale and "
               "OV-DQUO+DeCLIP (another host, not run here).")),
    TableSpec(
        "ovss", "Open-vocabulary semantic segmentation with a trained head (CAT-Seg recipe, mIoU), by variant",
        OVSS, rows=None,
        notes=("Columns are the configured benchmarks (`evaluate.ovss.benchmarks`); paper values appear only in "
               "columns of CVPR Table 4's 6 benchmarks, for the backbone `evaluate.ovss.paper_backbone`: CAT-Seg "
               "with its own CLIP on `clip`, CAT-Seg + DeCLIP on `declip`.",
               "seen / unseen mIoU: the mean IoU over the classes the head was trained on / over "
               "`evaluate.ovss.unseen_classes`, whose names and masks were held out of its training (mini world); "
               "they are shown only where a vocabulary is held out.")),
    TableSpec(
        "table2", "Journal Table 2: open-vocabulary 3D instance segmentation on ScanNet200", OV3D,
        rows=None, columns=tuple(_ov(f) for f in OV3D_FIELDS), baseline=("random labels", "random_labels"),
        notes=("Paper values: the host's original CLIP is shown on `clip`, host + DeCLIP on `declip`; the "
               "journal does not publish the other DeCLIP cells, so they stay empty.",
               "The paper's numbers come from the full host pipeline (mask proposals, SAM refinement, crops); "
               "ours from the feature protocol in the mode given, on the configured dataset.",
               "The `random labels` row assigns uniformly random classes to the same masks (a floor).")),
)}


def references_for(metric: Metric, row: str, host: str | None = None) -> Reference | None:
    """The published number for one cell, or None when the paper gives none."""
    for ref in REFERENCES:
        if ref.metric == metric and ref.row == row and ref.host == host:
            return ref
    return None


def get_table(table_id: str) -> TableSpec:
    from declip.errors import UserFacingError

    if table_id not in TABLES:
        raise UserFacingError(f"unknown table {table_id!r}; choose from: {', '.join(TABLES)}")
    return TABLES[table_id]


def select_rows(patterns: tuple[str, ...] | None, variants: list[str]) -> list[str]:
    """Variants matching the row patterns, in pattern order, each pattern's matches in `variants` order."""
    if patterns is None:
        return list(variants)
    out: list[str] = []
    for pattern in patterns:
        out += [v for v in variants if fnmatch.fnmatchcase(v, pattern) and v not in out]
    return out


def table_ids() -> list[str]:
    """Every declared table id, in declaration order (the workflow's targets)."""
    return list(TABLES)
