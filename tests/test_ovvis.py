"""The mini video world and the CLIP-VIS feature protocol, with a colour-reading stand-in for CLIP.

The stand-in dense map votes, per token, for the THINGS class whose colour its pixels show (what the tiny
CLIP is pretrained to recognise), so the protocol on oracle tracks must find nearly every object, and the
imperfect proposals (degraded masks, dropped frames, identity switches, distractors) must score lower.
"""

import argparse
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from declip.config import load
from declip.data import mini_video
from declip.data import ytvis as data
from declip.data.vocab import THINGS
from declip.errors import UserFacingError
from declip.evaluate import ovvis
from declip.metrics import ytvis as metric

CFG = load(overrides={"mini": {"video": {"n_videos": 6, "n_frames": 6}}})
MEAN = torch.tensor(CFG["student"]["mean"]).view(1, 3, 1, 1)
STD = torch.tensor(CFG["student"]["std"]).view(1, 3, 1, 1)
PALETTE = torch.tensor([c.color for c in THINGS], dtype=torch.float32)


class ColourDense(torch.nn.Module):
    embed_dim = len(THINGS)

    def forward(self, images):
        rgb = (images * STD + MEAN) * 255.0
        d = ((rgb[:, None] - PALETTE.view(1, -1, 3, 1, 1)) ** 2).sum(2)
        onehot = torch.nn.functional.one_hot(d.argmin(1), len(THINGS)).permute(0, 3, 1, 2).float()
        return SimpleNamespace(content=torch.nn.functional.avg_pool2d(onehot, 8) + 1e-3)


def fake_model(*_args, **_kwargs):
    def text(names, templates):
        assert len(templates) == 14  # CLIP-VIS's prompts
        return torch.eye(len(THINGS))[: len(names)], list(range(len(names)))

    return SimpleNamespace(dense=ColourDense(), text=text, device=torch.device("cpu"),
                           clip=SimpleNamespace(logit_scale=torch.tensor(math.log(100.0))))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("mini_video")
    counts = mini_video.generate(CFG, out)
    return out, counts


def test_world_layout_and_ytvis_format(world):
    root, counts = world
    gt = json.loads((root / "valid.json").read_text())
    assert counts["videos"] == 6 and len(gt["videos"]) == 6 and counts["null_frames"] > 0
    v = gt["videos"][0]
    assert len(v["file_names"]) == 6 and (root / "valid/JPEGImages" / v["file_names"][0]).is_file()
    parts = {c["name"]: c["partition"] for c in gt["categories"]}
    assert {n for n, p in parts.items() if p == 2} == set(CFG["mini"]["video"]["novel"])
    for a in gt["annotations"]:
        assert len(a["segmentations"]) == 6 and len(a["areas"]) == 6
        for seg, area in zip(a["segmentations"], a["areas"]):
            assert (seg is None) == (area is None)
            if seg is not None:
                assert data.decode(seg, v["height"], v["width"]).sum() == area
    # the GT scores itself perfectly, through the official results format
    res = [{"video_id": a["video_id"], "category_id": a["category_id"], "score": 1.0,
            "segmentations": a["segmentations"]} for a in gt["annotations"]]
    assert metric.evaluate(gt, res)["AP"] == pytest.approx(100.0)


def test_world_is_deterministic(world, tmp_path):
    root, _ = world
    mini_video.generate(CFG, tmp_path)
    assert (tmp_path / "valid.json").read_text() == (root / "valid.json").read_text()
    assert (tmp_path / "proposals/imperfect.json").read_text() == (root / "proposals/imperfect.json").read_text()


def test_imperfect_proposals_are_degraded(world):
    root, _ = world
    gt = json.loads((root / "valid.json").read_text())
    props = json.loads((root / "proposals/imperfect.json").read_text())
    n_distractors = CFG["mini"]["video"]["proposal_distractors"] * len(gt["videos"])
    assert len(props) == len(gt["annotations"]) + n_distractors
    best = []
    for a in gt["annotations"]:
        g = [metric.to_rle(s, 96, 96) for s in a["segmentations"]]
        best.append(max(metric.track_iou([metric.to_rle(s, 96, 96) for s in p["segmentations"]], g)
                        for p in props if p["video_id"] == a["video_id"]))
    assert 0.3 < np.mean(best) < 0.95


def test_track_score_is_clipvis_formula():
    probs = torch.tensor([[0.6, 0.4], [0.2, 0.8]])
    ious = torch.tensor([1.0, 0.5])
    got = ovvis.track_class_scores(probs, ious, 0.81)
    want = [math.sqrt((math.sqrt(0.6) + math.sqrt(0.2 * 0.5)) / 2 * 0.81),
            math.sqrt((math.sqrt(0.4) + math.sqrt(0.8 * 0.5)) / 2 * 0.81)]
    assert got.tolist() == pytest.approx(want)


def test_frame_probabilities_softmax_over_classes_with_synonym_max():
    pooled = torch.tensor([[1.0, 0.0]])
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])  # class 1 has two synonyms (rows 1 and 2)
    p = ovvis.frame_probabilities(pooled, text, [0, 1, 1], 2, logit_scale=10.0)
    logits = torch.tensor([10.0, 6.0])  # class 1: max(0, 0.6) * 10
    assert torch.allclose(p[0], logits.softmax(0))
    assert ovvis.clip_logit_scale(SimpleNamespace(logit_scale=torch.tensor(10.0))) == 100.0


def _run(root, tracks, monkeypatch, tmp_path):
    import declip.evaluate.text as text

    monkeypatch.setattr(text, "load_eval_model", fake_model)
    out = tmp_path / tracks / "metrics.json"
    args = argparse.Namespace(variant="clip", checkpoint=None, data=str(root), out=str(out), benchmark="mini_video",
                              tracks=tracks, device="cpu")
    ret = ovvis.main(args, CFG)
    assert ret["artifacts"][0] == str(out)
    return json.loads(out.read_text()), json.loads((out.parent / "results.json").read_text())


def test_protocol_oracle_and_imperfect_tracks(world, monkeypatch, tmp_path):
    root, _ = world
    oracle, results = _run(root, "oracle", monkeypatch, tmp_path)
    assert oracle["AP"] >= 90.0 and oracle["AP_base"] is not None and oracle["AP_novel"] is not None
    per_track = {}
    for r in results:  # top-k classes per track: k results with the same masks, scores sorted
        per_track.setdefault((r["video_id"], json.dumps(r["segmentations"])), []).append(r)
    assert all(len(v) == CFG["evaluate"]["ovvis"]["top_k"] for v in per_track.values())
    # scored from the written results file: rescoring it gives the same numbers
    assert metric.score_files(root / "valid.json", tmp_path / "oracle/results.json")["AP"] == oracle["AP"]
    imperfect, _ = _run(root, "imperfect", monkeypatch, tmp_path)
    assert imperfect["AP"] < oracle["AP"] - 10


def test_track_sources_and_errors(world, tmp_path):
    root, _ = world
    spec = dict(CFG["datasets"]["mini_video"], root=str(root))
    vs = data.load_video_set("mini_video", spec)
    assert len(data.load_tracks(vs, "oracle", spec)) == len(vs.gt["annotations"])
    with pytest.raises(UserFacingError, match="neither `oracle`"):
        data.load_tracks(vs, "nope", spec)
    with pytest.raises(UserFacingError, match="do not exist"):
        data.load_tracks(vs, "x", dict(spec, proposals={"x": "missing.json"}))
    hidden = data.load_video_set("ytvis", dict(spec, gt_public=False))
    with pytest.raises(UserFacingError, match="not public"):
        data.oracle_tracks(hidden)


def test_table_rows_and_paper_rows(tmp_path):
    import csv

    from declip.tables.render import render_tables

    root = tmp_path / "eval"
    for tracks, ap in (("oracle", 80.0), ("imperfect", 30.0)):
        p = root / "ovvis/mini_video" / tracks / "declip/metrics.json"
        p.parent.mkdir(parents=True)
        p.write_text(json.dumps({"AP": ap, "AP50": 90.0, "AP75": None, "AP_base": 70.0, "AP_novel": 10.0}))
    cfg = load()
    render_tables(root, tmp_path / "tables", table_ids=["ovvis"], cfg=cfg)
    rows = list(csv.DictReader((tmp_path / "tables/ovvis.csv").open()))
    ours = [(r["benchmark"], r["tracks"], r["variant"], r["AP"], r["AP75"], r["protocol"]) for r in rows if r["preset"]]
    assert ours == [("mini_video", "oracle", "declip", "80.0", "", "feature protocol: ovvis (oracle tracks)"),
                    ("mini_video", "imperfect", "declip", "30.0", "", "feature protocol: ovvis (imperfect tracks)")]
    paper = {r["variant"]: (r["AP.paper"], r["AP"]) for r in rows if r["protocol"] == "paper"}
    assert paper == {"CLIP-VIS (OVIS) (paper)": ("18.5", ""), "CLIP-VIS + DeCLIP (OVIS) (paper)": ("22.2", "")}
    assert "secondary source" in (tmp_path / "tables/ovvis.md").read_text()
