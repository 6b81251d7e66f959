"""The tables registry and its rendering: references only where protocols.md gives them, empty cells stay
empty, deltas are ours - paper, layouts follow the configured benchmarks, Table 2's rows and columns."""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import pytest

from declip.tables import registry
from declip.tables.registry import AVG, OV3D, OVSS, REGIONCLF, TFSEG, Metric
from declip.tables.render import MINI_NOTE, render_tables

PAPER6 = ["ade847", "context459", "ade150", "context59", "voc20", "voc21"]  # CVPR Table 4's order
PAPER8 = ["voc21", "context60", "coco_object", "voc20", "cityscapes", "context59", "ade150", "cocostuff171"]

# Every published number the registry may carry, copied by hand from shared/docs/protocols.md:
#   s1 "CLIPSelf 69.5/44.6, coupled 65.6/41.3, DeCLIP 75.0/51.8 (SAM-B VFM); Table 6 DINOv2-B 77.2/52.5"
#   s2 "DeCLIP 59.7 35.3 36.4 | 85.0 32.8 39.2 21.9 25.3 | avg 41.9. Journal avg 44.1. Peers (avg): CLIP 14.1,
#       SCLIP 38.2, ClearCLIP 38.1, NACLIP 39.4, CLIP-DINOiser 40.3, ProxyCLIP 42.3, Trident 45.8"
#   s4 "CAT-Seg B 12.0/19.0/31.8/57.5/94.6/77.3 -> +DeCLIP 15.3/21.4/36.3/60.6/96.6/81.3;
#       L 16.0/23.8/37.9/63.3/97.0/82.5 -> 17.6/25.9/40.7/63.9/97.7/83.9" (A-847/PC-459/A-150/PC-59/VOC-20/VOC-21)
#   s5 "OpenMask3D 15.4 / 19.9 / 23.1 / 17.1 / 14.1 / 14.9 and with DeCLIP AP_tail 18.9; Open3DIS (2D+3D) AP 23.7,
#       AP_head 27.8, AP_common 21.2, AP_tail 21.8 and with DeCLIP AP_tail 27.7"
#   s6 "Journal headline: CLIP-VIS 18.5 -> 22.2 AP (OVIS, per a secondary source)"
#   s3 "F-ViT+DeCLIP B/16 41.1, L/14 46.2 (CLIPSelf 37.6 / 44.3) OV-COCO novel AP50; OV-LVIS APr 26.8 / 37.2
#       (25.3 / 34.9); OV-DQUO+DeCLIP 46.1 / 48.3 and 31.0 / 41.5"
_OVD_HAND = {("F-ViT", "CLIPSelf", "B/16"): (37.6, 25.3), ("F-ViT", "CLIPSelf", "L/14"): (44.3, 34.9),
             ("F-ViT", "DeCLIP", "B/16"): (41.1, 26.8), ("F-ViT", "DeCLIP", "L/14"): (46.2, 37.2),
             ("OV-DQUO", "DeCLIP", "B/16"): (46.1, 31.0), ("OV-DQUO", "DeCLIP", "L/14"): (48.3, 41.5)}
EXPECTED = {
    ("clipself", "regionclf", "rois.thing_top1", None, None): 69.5,
    ("clipself", "regionclf", "rois.stuff_top1", None, None): 44.6,
    ("coupled", "regionclf", "rois.thing_top1", None, None): 65.6,
    ("coupled", "regionclf", "rois.stuff_top1", None, None): 41.3,
    ("vfm_sam_b", "regionclf", "rois.thing_top1", None, None): 75.0,
    ("vfm_sam_b", "regionclf", "rois.stuff_top1", None, None): 51.8,
    ("vfm_dinov2_b", "regionclf", "rois.thing_top1", None, None): 77.2,
    ("vfm_dinov2_b", "regionclf", "rois.stuff_top1", None, None): 52.5,
    **{("declip_cvpr", "tfseg", "mIoU", b, None): v
       for b, v in zip(PAPER8, (59.7, 35.3, 36.4, 85.0, 32.8, 39.2, 21.9, 25.3))},
    ("declip_cvpr", "tfseg", "mIoU", "avg", None): 41.9,
    ("declip", "tfseg", "mIoU", "avg", None): 44.1,
    ("clip", "tfseg", "mIoU", "avg", None): 14.1,
    **{(peer, "tfseg", "mIoU", "avg", None): v for peer, v in
       (("SCLIP", 38.2), ("ClearCLIP", 38.1), ("NACLIP", 39.4), ("CLIP-DINOiser", 40.3), ("ProxyCLIP", 42.3),
        ("Trident", 45.8))},
    **{("clip", "ov3d", f, None, "openmask3d"): v for f, v in
       zip(("AP", "AP50", "AP25", "AP_head", "AP_common", "AP_tail"), (15.4, 19.9, 23.1, 17.1, 14.1, 14.9))},
    ("declip", "ov3d", "AP_tail", None, "openmask3d"): 18.9,
    ("clip", "ov3d", "AP", None, "open3dis"): 23.7,
    ("clip", "ov3d", "AP_head", None, "open3dis"): 27.8,
    ("clip", "ov3d", "AP_common", None, "open3dis"): 21.2,
    ("clip", "ov3d", "AP_tail", None, "open3dis"): 21.8,
    ("declip", "ov3d", "AP_tail", None, "open3dis"): 27.7,
    ("CLIP-VIS (OVIS)", "ovvis", "AP", None, None): 18.5,
    ("CLIP-VIS + DeCLIP (OVIS)", "ovvis", "AP", None, None): 22.2,
    # OVD: reference-only rows, and the F-ViT numbers on our detector rows at the matching paper preset.
    **{(f"{h}+{b} ViT-{s}", "ovd", f, None, None): v for (h, b, s), vals in _OVD_HAND.items()
       for f, v in zip(("AP50_novel", "APr"), vals)},
    **{(b.lower(), "ovd", f, None, f"paper-{s.replace('/', '').lower()}"): v for (h, b, s), vals in _OVD_HAND.items()
       if h == "F-ViT" for f, v in zip(("AP50_novel", "APr"), vals)},
    **{(row, "ovss", "mIoU", b, bb): v
       for row, bb, vals in (("clip", "B", (12.0, 19.0, 31.8, 57.5, 94.6, 77.3)),
                             ("declip", "B", (15.3, 21.4, 36.3, 60.6, 96.6, 81.3)),
                             ("clip", "L", (16.0, 23.8, 37.9, 63.3, 97.0, 82.5)),
                             ("declip", "L", (17.6, 25.9, 40.7, 63.9, 97.7, 83.9)))
       for b, v in zip(PAPER6, vals)},
}


def test_references_are_exactly_the_published_numbers():
    got = {(r.row, r.metric.family, r.metric.field, r.metric.benchmark, r.host): r.value for r in registry.REFERENCES}
    assert got == EXPECTED
    assert len(registry.REFERENCES) == len(EXPECTED)  # no duplicate declarations
    for r in registry.REFERENCES:
        assert r.source.strip()
        family_table = {"regionclf": ("CVPR Table 1", "Table 6"), "tfseg": ("CVPR Table 5", "journal", "paper, TF-OVSS peers"),
                        "ov3d": ("journal Table 2",), "ovvis": ("journal headline",),
                        "ovd": ("CVPR Table 2",), "ovss": ("CVPR Table 4",)}[r.metric.family]
        assert r.source.startswith(family_table)


def test_every_table_has_id_title_and_known_rows():
    assert registry.table_ids()[-1] == "table2"
    assert {"regionclf", "tfseg", "abl_coupling", "abl_sdgsc", "abl_rcc", "abl_lambda", "abl_vfm",
            "abl_context", "abl_blocks", "table2"} <= set(registry.table_ids())
    from declip.config import load

    variants = list(load()["variant_presets"])
    for spec in registry.TABLES.values():
        assert spec.title
        if spec.rows is not None:  # every declared row pattern names at least one configured variant
            for pattern in spec.rows:
                assert registry.select_rows((pattern,), variants), (spec.id, pattern)


def _write(root: Path, rel: str, payload: dict) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(payload))


def _rc(thing1, stuff1, thing5=90.0, stuff5=80.0):
    return {"thing_top1": thing1, "thing_top5": thing5, "stuff_top1": stuff1, "stuff_top5": stuff5}


def _read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], [dict(zip(rows[0], r)) for r in rows[1:]]


MINI_CFG = {"preset": "mini", "variants": ["clip", "clipself", "declip", "coupled", "no_rcc", "lambda_0.5", "lambda_0.1"]}


@pytest.fixture
def metrics_root(tmp_path):
    root = tmp_path / "eval"
    chance = _rc(100 / 15, 100 / 15, 500 / 15, 500 / 15)
    _write(root, "regionclf/mini2d_val/clipself/metrics.json",
           {"rois": _rc(70.25, 40.0), "maskpool": _rc(60.0, 30.0), "crops": _rc(50.0, None), "chance": chance})
    _write(root, "regionclf/mini2d_val/declip/metrics.json",
           {"rois": _rc(80.0, 50.0), "maskpool": _rc(81.0, float("nan")), "chance": chance})
    _write(root, "regionclf/mini2d_val/lambda_0.1/metrics.json", {"rois": _rc(10.0, 11.0), "chance": chance})
    _write(root, "regionclf/mini2d_val/lambda_0.5/metrics.json", {"rois": _rc(12.0, 13.0), "chance": chance})
    _write(root, "tfseg/mini2d_val/declip/metrics.json", {"mIoU": 33.3, "aAcc": 70.0, "per_class": {}})
    return root


def test_regionclf_cells_deltas_and_empty_cells(metrics_root, tmp_path):
    out = tmp_path / "tables"
    render_tables(metrics_root, out, ["regionclf"], cfg=MINI_CFG)
    header, rows = _read_csv(out / "regionclf.csv")
    # Paper columns only next to the metrics the paper publishes (rois thing/stuff top-1).
    assert [h for h in header if h.endswith(".paper")] == ["rois.thing_top1.paper", "rois.stuff_top1.paper"]
    # Config order; clip and coupled have no file: no row.
    assert [r["variant"] for r in rows] == ["chance", "clipself", "declip", "lambda_0.5", "lambda_0.1"]
    cs = rows[1]
    assert float(cs["rois.thing_top1"]) == 70.25
    assert float(cs["rois.thing_top1.paper"]) == 69.5
    assert math.isclose(float(cs["rois.thing_top1.delta"]), 70.25 - 69.5)
    assert math.isclose(float(cs["rois.stuff_top1.delta"]), 40.0 - 44.6, abs_tol=1e-9)
    assert cs["crops.stuff_top1"] == ""  # null in the file -> empty
    assert cs["source"].startswith("CVPR Table 1")
    dc = rows[2]
    assert dc["rois.thing_top1.paper"] == "" and dc["rois.thing_top1.delta"] == ""  # no published number
    assert dc["maskpool.stuff_top1"] == ""  # NaN in the file -> empty
    assert dc["crops.thing_top1"] == ""  # classifier absent -> empty
    assert dc["preset"] == "mini" and dc["protocol"] == "feature protocol: regionclf (mini2d_val)"
    assert math.isclose(float(rows[0]["rois.thing_top1"]), 100 / 15, rel_tol=1e-4)
    text = (out / "regionclf.csv").read_text().lower()
    assert "nan" not in text and "none" not in text
    md = (out / "regionclf.md").read_text()
    assert MINI_NOTE in md and "| clipself | 70.2 | 69.5 | +0.8 |" in md


def test_ablation_rows_only_for_variants_with_metrics(metrics_root, tmp_path):
    out = tmp_path / "tables"
    render_tables(metrics_root, out, ["abl_lambda", "abl_rcc", "abl_coupling"], cfg=MINI_CFG)
    header, rows = _read_csv(out / "abl_lambda.csv")
    assert [r["variant"] for r in rows] == ["lambda_0.5", "lambda_0.1", "declip"]  # config order, then declip
    assert rows[2]["avg.mIoU"] == "33.3" and rows[0]["avg.mIoU"] == ""
    assert rows[2]["protocol"] == "feature protocol: regionclf (mini2d_val) + tfseg"
    _, rcc = _read_csv(out / "abl_rcc.csv")
    assert [r["variant"] for r in rcc] == ["declip"]  # no_rcc has no metrics
    _, coupling = _read_csv(out / "abl_coupling.csv")
    assert [r["variant"] for r in coupling] == ["declip", "clipself"]


def test_ablation_without_tfseg_drops_the_column_and_empty_table_has_note(tmp_path):
    root = tmp_path / "eval"
    _write(root, "regionclf/mini2d_val/no_sdgsc/metrics.json", {"rois": _rc(1.0, 2.0)})
    out = tmp_path / "tables"
    render_tables(root, out, ["abl_sdgsc", "abl_blocks"], cfg={"preset": "paper-b16", "variants": ["no_sdgsc"]})
    header, rows = _read_csv(out / "abl_sdgsc.csv")
    assert "avg.mIoU" not in header and [r["variant"] for r in rows] == ["no_sdgsc"]
    header, rows = _read_csv(out / "abl_blocks.csv")
    assert rows == [] and header[0] == "variant"
    md = (out / "abl_blocks.md").read_text()
    assert "No metrics yet" in md and MINI_NOTE not in md


def test_tfseg_mini_layout_has_no_paper_values(metrics_root, tmp_path):
    out = tmp_path / "tables"
    render_tables(metrics_root, out, ["tfseg"], cfg={**MINI_CFG, "evaluate": {"tfseg": {"benchmarks": ["mini2d_val"]}}})
    header, rows = _read_csv(out / "tfseg.csv")
    assert header == ["variant", "mini2d_val.mIoU", "avg.mIoU", "preset", "protocol", "weights", "options", "source"]
    assert rows == [{"variant": "declip", "mini2d_val.mIoU": "33.3", "avg.mIoU": "33.3", "preset": "mini",
                     "protocol": "feature protocol: tfseg", "weights": "", "options": "", "source": ""}]


def test_tfseg_paper_layout_values_average_and_peers(tmp_path):
    root = tmp_path / "eval"
    ours = dict(zip(PAPER8, (60.0, 35.0, 36.0, 85.0, 33.0, 39.0, 22.0, 25.0)))
    for b, v in ours.items():
        _write(root, f"tfseg/{b}/declip_cvpr/metrics.json", {"mIoU": v})
    for b in PAPER8[:-1]:  # one benchmark missing: no average for clip
        _write(root, f"tfseg/{b}/clip/metrics.json", {"mIoU": 10.0})
    out = tmp_path / "tables"
    render_tables(root, out, ["tfseg"], cfg={"preset": "paper-b16", "variants": ["clip", "declip_cvpr"],
                                             "evaluate": {"tfseg": {"benchmarks": PAPER8}}})
    header, rows = _read_csv(out / "tfseg.csv")
    assert header[:4] == ["variant", "voc21.mIoU", "voc21.mIoU.paper", "voc21.mIoU.delta"]
    by = {r["variant"]: r for r in rows}
    clip, dc = by["clip"], by["declip_cvpr"]
    assert clip["avg.mIoU"] == "" and clip["avg.mIoU.paper"] == "14.1" and clip["avg.mIoU.delta"] == ""
    assert clip["voc21.mIoU.paper"] == ""  # CVPR Table 5 gives only CLIP's average
    assert math.isclose(float(dc["avg.mIoU"]), sum(ours.values()) / 8, abs_tol=1e-4)
    assert math.isclose(float(dc["avg.mIoU.delta"]), sum(ours.values()) / 8 - 41.9, abs_tol=1e-4)
    assert math.isclose(float(dc["ade150.mIoU.delta"]), 22.0 - 21.9, abs_tol=1e-9)
    assert by["Trident (paper)"]["avg.mIoU.paper"] == "45.8" and by["Trident (paper)"]["avg.mIoU"] == ""
    assert by["Trident (paper)"]["preset"] == "" and by["Trident (paper)"]["protocol"] == "paper"


def _ov(v):
    return {k: v for k in ("AP", "AP50", "AP25", "AP_head", "AP_common", "AP_tail")}


def test_table2_rows_columns_and_paper_cells(tmp_path):
    root = tmp_path / "eval"
    for host in ("openmask3d", "open3dis"):
        for variant, v in (("clip", 10.0), ("declip", 20.0), ("clipself", 15.0)):
            _write(root, f"ov3d/{host}/dense/{variant}/metrics.json", {**_ov(v), "percent": True, "random_labels": _ov(0.5)})
    _write(root, "ov3d/openmask3d/crops/clip/metrics.json", {**_ov(11.0), "random_labels": _ov(0.25)})
    out = tmp_path / "tables"
    table2 = tmp_path / "table2.csv"
    written = render_tables(root, out, ["table2"], table2_out=table2,
                            cfg={"preset": "mini", "tables": {"table2_variants": ["clip", "declip"]}})  # the job slice
    assert written == [table2, out / "table2.md"]
    header, rows = _read_csv(table2)
    metrics = ["AP", "AP50", "AP25", "AP_head", "AP_common", "AP_tail"]
    assert header == ["host", "mode", "variant"] + [c for m in metrics for c in (m, f"{m}.paper", f"{m}.delta")] + \
        ["preset", "protocol", "weights", "options", "source"]
    keys = [(r["host"], r["mode"], r["variant"]) for r in rows]
    # Configured Table 2 variants first, in their order, then other variants found on disk.
    assert keys == [("openmask3d", "crops", "random labels"), ("openmask3d", "crops", "clip"),
                    ("openmask3d", "dense", "random labels"), ("openmask3d", "dense", "clip"),
                    ("openmask3d", "dense", "declip"), ("openmask3d", "dense", "clipself"),
                    ("open3dis", "dense", "random labels"), ("open3dis", "dense", "clip"),
                    ("open3dis", "dense", "declip"), ("open3dis", "dense", "clipself")]
    by = {k: r for k, r in zip(keys, rows)}
    om_clip = by[("openmask3d", "dense", "clip")]
    assert [om_clip[f"{m}.paper"] for m in metrics] == ["15.4", "19.9", "23.1", "17.1", "14.1", "14.9"]
    assert math.isclose(float(om_clip["AP.delta"]), 10.0 - 15.4)
    om_declip = by[("openmask3d", "dense", "declip")]
    assert [om_declip[f"{m}.paper"] for m in metrics] == ["", "", "", "", "", "18.9"]
    o3_clip = by[("open3dis", "dense", "clip")]
    assert [o3_clip[f"{m}.paper"] for m in metrics] == ["23.7", "", "", "27.8", "21.2", "21.8"]
    assert all(by[("open3dis", "dense", "clipself")][f"{m}.paper"] == "" for m in metrics)
    assert by[("openmask3d", "crops", "random labels")]["AP"] == "0.25"
    assert by[("openmask3d", "crops", "random labels")]["AP.paper"] == ""
    assert om_clip["protocol"] == "feature protocol: ov3d (dense)"
    assert "journal does not publish" in (out / "table2.md").read_text()


def test_cli_renders_all_tables_with_default_table2_path(metrics_root, tmp_path):
    from declip.cli import tables as cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    out = tmp_path / "results" / "tables"
    args = parser.parse_args(["--metrics-root", str(metrics_root), "--out-dir", str(out), "--preset", "paper-l14"])
    result = cli.run(args, {"variants": MINI_CFG["variants"]})
    paths = {Path(p) for p in result["artifacts"]}
    assert tmp_path / "results" / "table2.csv" in paths
    assert {out / f"{t}.csv" for t in registry.table_ids() if t != "table2"} <= paths
    assert all(p.exists() for p in paths)
    _, rows = _read_csv(out / "regionclf.csv")
    assert {r["preset"] for r in rows} == {"paper-l14"}


def test_unknown_table_and_ambiguous_dataset_are_user_errors(tmp_path):
    from declip.errors import UserFacingError

    with pytest.raises(UserFacingError, match="choose from"):
        render_tables(tmp_path, tmp_path / "t", ["table9"])
    _write(tmp_path / "eval", "regionclf/a/declip/metrics.json", {"rois": _rc(1.0, 1.0)})
    _write(tmp_path / "eval", "regionclf/b/declip/metrics.json", {"rois": _rc(1.0, 1.0)})
    with pytest.raises(UserFacingError, match="--regionclf-dataset"):
        render_tables(tmp_path / "eval", tmp_path / "t", ["regionclf"])
    render_tables(tmp_path / "eval", tmp_path / "t", ["regionclf"], regionclf_dataset="b")
    assert "regionclf (b)" in (tmp_path / "t" / "regionclf.csv").read_text()


def test_metric_keys_and_labels():
    assert Metric(TFSEG, "mIoU", "ade150").label == "ADE20K-150 mIoU"
    assert Metric(TFSEG, "mIoU", AVG).key == "avg.mIoU"
    assert Metric(REGIONCLF, "rois.thing_top1").label == "rois thing@1"
    assert Metric(OV3D, "AP_tail").key == "AP_tail"


def test_rows_say_which_weights_and_options_produced_them(tmp_path):
    """Released-weight rows are marked as such; options agreeing across families are listed once, differing
    ones per family; files without options leave the cells empty."""
    root = tmp_path / "eval"
    base = {"dense_mode": "qq", "attn_scale": "none", "context_proj": "q", "token_norm": False}
    rel = {"weights": "released", "checkpoint": "x.pt", **base, "dense_mode": "csa", "attn_scale": "sqrt_d"}
    ours = {"weights": "distilled", "checkpoint": "model.pt", **base}
    _write(root, "regionclf/mini2d_val/released_declip/metrics.json",
           {"rois": _rc(50.0, 40.0), "options": {**rel, "maskpool": "authors"}})
    _write(root, "tfseg/mini2d_val/released_declip/metrics.json", {"mIoU": 30.0, "options": rel})
    _write(root, "regionclf/mini2d_val/declip/metrics.json", {"rois": _rc(55.0, 45.0), "options": ours})
    _write(root, "tfseg/mini2d_val/declip/metrics.json", {"mIoU": 31.0, "options": ours})
    _write(root, "regionclf/mini2d_val/clip/metrics.json", {"rois": _rc(20.0, 10.0)})
    out = tmp_path / "tables"
    cfg = {"preset": "mini", "variants": ["clip", "declip", "released_declip"],
           "evaluate": {"regionclf": {"dataset": "mini2d_val", "classifiers": ["rois"]}, "tfseg": {"benchmarks": ["mini2d_val"]}}}
    render_tables(root, out, ["tfseg", "regionclf"], cfg=cfg)
    _, tf = _read_csv(out / "tfseg.csv")
    by = {r["variant"]: r for r in tf}
    assert by["released_declip"]["weights"] == "released" and by["declip"]["weights"] == "distilled"
    assert by["released_declip"]["options"] == "dense_mode=csa, attn_scale=sqrt_d, context_proj=q, token_norm=false"
    _, rc = _read_csv(out / "regionclf.csv")
    by = {r["variant"]: r for r in rc}
    assert by["released_declip"]["options"].endswith("maskpool=authors")
    assert by["clip"]["weights"] == "" and by["clip"]["options"] == ""
    assert "`released` = the authors' released checkpoint" in (out / "regionclf.md").read_text()
def test_ovss_mini_table_has_seen_unseen_and_no_paper_values(tmp_path):
    root = tmp_path / "eval"
    _write(root, "ovss/mini2d_val/clip/metrics.json", {"mIoU": 20.0, "seen_mIoU": 25.0, "unseen_mIoU": 7.5})
    _write(root, "ovss/mini2d_val/declip/metrics.json", {"mIoU": 30.0, "seen_mIoU": 35.0, "unseen_mIoU": None})
    cfg = {"preset": "mini", "variants": ["clip", "clipself", "declip"],
           "evaluate": {"ovss": {"benchmarks": ["mini2d_val"], "paper_backbone": "B"}}}
    render_tables(root, tmp_path / "t", ["ovss"], cfg=cfg)
    header, rows = _read_csv(tmp_path / "t" / "ovss.csv")
    assert header[:4] == ["variant", "mini2d_val.mIoU", "mini2d_val.seen_mIoU", "mini2d_val.unseen_mIoU"]
    assert not any(h.endswith(".paper") for h in header)  # the mini benchmark is not a Table 4 column
    assert [r["variant"] for r in rows] == ["clip", "declip"]  # clipself has no metrics: no row
    assert rows[0]["mini2d_val.unseen_mIoU"] == "7.5" and rows[1]["mini2d_val.unseen_mIoU"] == ""
    assert "mini2d_val unseen mIoU" in (tmp_path / "t" / "ovss.md").read_text()


def test_ovss_paper_table_compares_with_the_configured_backbone(tmp_path):
    root = tmp_path / "eval"
    _write(root, "ovss/ade847/declip/metrics.json", {"mIoU": 16.0})
    _write(root, "ovss/voc21/clip/metrics.json", {"mIoU": 80.0})
    for backbone, declip_ref, clip_ref in (("B", 15.3, 77.3), ("L", 17.6, 82.5)):
        cfg = {"preset": "paper", "variants": ["clip", "declip"],
               "evaluate": {"ovss": {"benchmarks": PAPER6, "paper_backbone": backbone}}}
        render_tables(root, tmp_path / backbone, ["ovss"], cfg=cfg)
        header, rows = _read_csv(tmp_path / backbone / "ovss.csv")
        assert "ade847.seen_mIoU" not in header  # no held-out vocabulary at full scale
        by = {r["variant"]: r for r in rows}
        assert float(by["declip"]["ade847.mIoU.paper"]) == declip_ref
        assert float(by["declip"]["ade847.mIoU.delta"]) == pytest.approx(16.0 - declip_ref)
        assert float(by["clip"]["voc21.mIoU.paper"]) == clip_ref
        assert by["clip"]["ade847.mIoU"] == "" and by["clip"]["ade847.mIoU.delta"] == ""
        assert "CVPR Table 4" in by["declip"]["source"]
    assert Metric(OVSS, "unseen_mIoU", "context459").label == "PC-459 unseen mIoU"
