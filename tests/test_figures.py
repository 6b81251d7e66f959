"""Figures: affinity maps against an independent cosine computation, query points inside their masks,
colouring, and PNGs drawn end to end on a tiny random CLIP, a tiny VFM cache and a few mini-world images."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from declip.tables.figures import colorize, minmax, palette, points_from_masks, token_affinity


def test_token_affinity_is_cosine_to_the_query_token():
    torch.manual_seed(0)
    tokens = torch.randn(3, 4, 5)
    got = token_affinity(tokens, 1, 2)
    flat = tokens.reshape(-1, 5).numpy()
    q = flat[1 * 4 + 2]
    want = flat @ q / (np.linalg.norm(flat, axis=1) * np.linalg.norm(q))
    assert got.shape == (3, 4)
    np.testing.assert_allclose(got.reshape(-1), want, rtol=1e-5, atol=1e-6)
    assert got[1, 2] == pytest.approx(1.0, abs=1e-6)


def test_points_lie_inside_rings_and_at_the_most_interior_pixel():
    yy, xx = np.mgrid[:41, :41]
    r = np.hypot(yy - 20, xx - 20)
    ring = (r >= 10) & (r <= 16)  # centroid (20, 20) is outside the ring
    square = np.zeros((41, 41), bool)
    square[5:10, 30:35] = True  # 5x5: the unique deepest pixel is the centre (7, 32)
    pts = points_from_masks([ring, square, np.zeros((41, 41), bool)])
    assert len(pts) == 2
    assert ring[pts[0]]
    assert pts[1] == (7, 32)


def test_colorize_palette_and_minmax():
    cols = palette(3)
    labels = np.array([[0, 1], [2, 255]])
    rgb = colorize(labels, cols)
    assert (rgb[0, 0] == cols[0]).all() and (rgb[1, 0] == cols[2]).all()
    assert (rgb[1, 1] == 0).all()  # ignore index drawn black
    assert len({tuple(c) for c in palette(40)}) == 40
    np.testing.assert_allclose(minmax(np.array([2.0, 4.0, 3.0])), [0.0, 1.0, 0.5])
    assert (minmax(np.ones(3)) == 0).all()


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    """A 2-image mini world, a random tiny CLIP and its VFM teacher cache (seconds on one core)."""
    torch.set_num_threads(1)
    from declip.config import load
    from declip.data.mini2d import generate
    from declip.distill.cache import extract
    from declip.models.clip import create_clip, save_clip

    root = tmp_path_factory.mktemp("world")
    cfg = load(overrides={"mini": {"world2d": {"n_train": 1, "n_val": 2, "n_single": 1}},
                          "student": {"checkpoint": str(root / "clip.pt")},
                          "datasets": {"mini2d_val": {"root": str(root / "mini2d")}},
                          "paths": {"cache": str(root / "cache")}, "teachers": {"tiny_weights": None}})
    generate(cfg, root / "mini2d")
    torch.manual_seed(0)
    save_clip(create_clip(cfg["student"]), root / "clip.pt")
    index = root / "cache" / "teachers" / "index.json"
    extract(cfg, "mini2d_val", "vfm:dinov2_b", index, progress=False)
    return cfg, root, index


def _run_cli(cfg, argv):
    from declip.cli import figures as cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.run(parser.parse_args(argv), cfg)


def test_figures_cli_draws_pngs_for_decoupled_and_clip_variants(tiny_world, tmp_path, monkeypatch):
    from PIL import Image

    cfg, root, index = tiny_world
    monkeypatch.chdir(tmp_path)  # relative outputs (text-embedding cache) stay in the test folder
    common = ["--checkpoint", str(root / "clip.pt"), "--data", str(root / "mini2d"),
              "--dataset", "mini2d_val", "--teachers", str(index), "--num-images", "1"]
    res = _run_cli(cfg, ["--variant", "declip", *common, "--out-dir", str(tmp_path / "declip")])
    names = sorted(p.rsplit("/", 1)[-1] for p in res["artifacts"])
    assert names == ["affinity_000001.png", "segmentation_000001.png"]
    res_clip = _run_cli(cfg, ["--variant", "clip", *common, "--out-dir", str(tmp_path / "clip"), "--points", "0.5,0.5"])
    with Image.open(tmp_path / "declip" / "affinity_000001.png") as a, \
            Image.open(tmp_path / "clip" / "affinity_000001.png") as b:
        assert a.format == "PNG" and b.format == "PNG"
        # declip (q-q) adds a context-token column that the vanilla `clip` variant has none of.
        assert a.width > b.width
        # three annotated query points (rows) against one given point
        assert a.height > b.height
    assert len(res_clip["artifacts"]) == 2


def test_figures_reject_bad_points_and_images_missing_from_cache(tiny_world, tmp_path):
    from declip.errors import UserFacingError

    cfg, root, index = tiny_world
    base = ["--variant", "declip", "--checkpoint", str(root / "clip.pt"), "--dataset", "mini2d_val",
            "--teachers", str(index), "--out-dir", str(tmp_path / "x")]
    with pytest.raises(UserFacingError, match="fractions"):
        _run_cli(cfg, [*base, "--points", "0.5;2,1"])
    other = {**cfg, "datasets": {**cfg["datasets"], "mini2d": {**cfg["datasets"]["mini2d"], "root": str(root / "mini2d")}}}
    with pytest.raises(UserFacingError, match="extracted for dataset 'mini2d_val'"):
        _run_cli(other, [*base[:-4], "--dataset", "mini2d", "--teachers", str(index), "--out-dir", str(tmp_path / "x")])
