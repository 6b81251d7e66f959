"""The claims table (issue 15): seed runs in the config, per-claim verdicts against the seed spread, on
hand-made metrics files whose expected verdicts are worked out by hand."""

import json

import pytest

from declip import config
from declip.tables.claims import CLAIMS, claims_records, render_claims


@pytest.fixture(scope="module")
def cfg():
    return config.load(overrides={"seeds": [0, 1, 2], "seed_variants": ["declip_cvpr", "clipself", "declip", "coupled"]})


def test_seed_runs_resolve_to_their_base_recipe_and_seed(cfg):
    assert config.split_seed("lambda_0.1-seed2") == ("lambda_0.1", 2)
    assert config.split_seed("lambda_0.1") == ("lambda_0.1", None)
    runs = config.seed_runs(cfg)
    assert runs[:2] == ["declip_cvpr-seed1", "declip_cvpr-seed2"] and len(runs) == 8
    assert config.variant_method(cfg, "coupled-seed1") == config.variant_method(cfg, "coupled")
    spec = config.job_spec(cfg, "distill", {"variant": "coupled-seed2"}, [])
    assert spec["config"]["seed"] == 2 and spec["config"]["method"]["coupled"] is True
    # Teachers do not depend on the distillation seed: their job keeps the global seed.
    assert config.job_spec(cfg, "teachers", {"dataset": "mini2d", "teacher": "sd"}, [])["config"]["seed"] == 0
    # A recipe shared under two names is distilled once per seed.
    assert config.canonical_variant(cfg, "vfm_dinov2_b-seed1") == "declip_cvpr-seed1"


def test_seed_variants_must_be_presets():
    with pytest.raises(config.ConfigError, match="seed_variants"):
        config.load(overrides={"seed_variants": ["nope"]})


def _write(root, run, thing, stuff, miou):
    for path, obj in ((root / "regionclf" / "mini2d_val" / run, {"rois": {"thing_top1": thing, "stuff_top1": stuff}}),
                      (root / "tfseg" / "mini2d_val" / run, {"mIoU": miou})):
        path.mkdir(parents=True, exist_ok=True)
        (path / "metrics.json").write_text(json.dumps(obj))


def test_verdicts_follow_the_seed_spread(cfg, tmp_path):
    # region = mean(thing, stuff). declip_cvpr seeds: 60, 62, 64 (range 4); clipself: 50, 51, 52 (range 2).
    for run, v in {"declip_cvpr": 60, "declip_cvpr-seed1": 62, "declip_cvpr-seed2": 64,
                   "clipself": 50, "clipself-seed1": 51, "clipself-seed2": 52,
                   "declip": 55, "declip-seed1": 56, "declip-seed2": 57,     # range 2
                   "coupled": 54, "coupled-seed1": 57, "coupled-seed2": 54,  # mean 55, range 3
                   "clip": 70}.items():
        _write(tmp_path, run, v + 1, v - 1, v / 2)
    # The lambda sweep ran once each: judged with the pooled spread (largest seed range = 4, declip_cvpr).
    for run, v in {"lambda_0.1": 58, "lambda_0.2": 54, "lambda_0.3": 59.5, "lambda_0.5": 50, "lambda_1.0": 40}.items():
        _write(tmp_path, run, v + 1, v - 1, v / 2)
    recs = {r["id"]: r for r in claims_records(cfg, tmp_path)}
    r = recs["declip_gt_clipself"]  # 62 vs 51: diff 11 > spread max(4, 2) = 4
    assert (r["mini_a"], r["mini_b"], r["diff"], r["spread"], r["verdict"]) == (62, 51, 11, 4, "agrees")
    assert r["mini_a_seeds"] == "60.0/62.0/64.0"
    r = recs["decoupled_gt_coupled"]  # 56 vs 55: |1| <= max(2, 3)
    assert r["verdict"] == "inconclusive" and r["spread"] == 3
    r = recs["clipself_gt_clip"]  # clip has one run: pooled spread 4; 51 - 70 = -19
    assert r["verdict"] == "disagrees" and r["spread"] == 4 and r["spread_source"] == "pooled over seed variants"
    r = recs["lambda_near_best"]  # best is lambda_0.3 at 59.5; declip 56 is 3.5 below, within the pooled 4
    assert r["b"] == "lambda_0.3" and r["diff"] == pytest.approx(-3.5) and r["verdict"] == "agrees"
    # The secondary metric (TF-OVSS) of the same claim: values halved, spreads halved -> same verdict.
    assert recs["declip_gt_clipself"]["secondary_verdict"] == "agrees"
    # No metrics at all for the SAM teacher: nothing computed, said so.
    assert recs["dinov2_gt_sam"]["verdict"] == "not computed" and "vfm_sam_b" in recs["dinov2_gt_sam"]["spread_source"]


def test_render_writes_csv_and_markdown_with_every_claim(cfg, tmp_path):
    written = render_claims(cfg, tmp_path / "eval", tmp_path / "tables")
    csv_text = (tmp_path / "tables" / "claims.csv").read_text().splitlines()
    assert len(csv_text) == 1 + len(CLAIMS)
    assert "not computed" in (tmp_path / "tables" / "claims.md").read_text()
    assert [p.name for p in written] == ["claims.csv", "claims.md"]


def test_teacher_table_puts_each_teacher_next_to_the_clip(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "dinov2_b.json").write_text(json.dumps(
        {"teacher": "dinov2_b", "objective": "dino+ibot", "steps": 5, "seconds": 3.0, "affinity": {"auc": 0.97}}))
    (tmp_path / "t" / "sd.json").write_text(json.dumps(
        {"teacher": "sd", "objective": "vae_mse_kl+ddpm_eps", "steps": 5, "seconds": 3.0, "cpu_seconds": 2.5, "affinity": {"auc": 0.6}}))
    (tmp_path / "clip.json").write_text(json.dumps({"clip:qq": {"auc": 0.9}, "clip:vanilla": {"auc": 0.95}}))
    from declip.tables.claims import teacher_records

    rows = {r["model"]: r for r in teacher_records(tmp_path / "t", tmp_path / "clip.json")}
    # A teacher beats the CLIP only above the CLIP's best figure (0.95 here).
    assert rows["dinov2_b"]["beats_clip"] is True and rows["sd"]["beats_clip"] is False
    assert rows["CLIP (vanilla)"]["auc"] == 0.95 and rows["sd"]["cpu_seconds"] == 2.5
