"""Prompt ensembles, synonyms and the text-embedding cache (declip.evaluate.text)."""


import torch
import torch.nn.functional as F

from declip.evaluate import text as T
from declip.evaluate.templates import IMAGENET_TEMPLATES, VILD_TEMPLATES


def test_template_sets_have_the_published_sizes():
    assert len(VILD_TEMPLATES) == len(set(VILD_TEMPLATES)) == 63
    assert len(IMAGENET_TEMPLATES) == len(set(IMAGENET_TEMPLATES)) == 80


def test_vild_expansion_follows_clipself():
    prompts = T.vild_prompts("apple_tree")
    assert len(prompts) == 63
    assert prompts[0] == "There is an apple tree in the scene."
    assert "This is a photo of an apple tree." in prompts
    assert "This is the plastic apple tree." in prompts
    assert "itap of my apple tree." in prompts
    assert "This is a photo of a dog." in T.vild_prompts("dog")


def test_split_synonyms():
    queries, owner = T.split_synonyms(["sky; wall", "cat", "person; person in shirt; body"])
    assert queries == ["sky", "wall", "cat", "person", "person in shirt", "body"]
    assert owner == [0, 0, 1, 2, 2, 2]


def test_max_over_synonyms_any_dim():
    scores = torch.tensor([[0.1, 0.7, 0.3, 0.2], [0.9, 0.1, 0.0, 0.5]])
    out = T.max_over_synonyms(scores, [0, 0, 1, 1], 2)
    assert torch.allclose(out, torch.tensor([[0.7, 0.3], [0.9, 0.5]]))
    maps = scores.T[:, :, None].expand(4, 2, 3)  # (Q, H, W)
    out0 = T.max_over_synonyms(maps, [0, 0, 1, 1], 2, dim=0)
    assert out0.shape == (2, 2, 3)
    assert torch.allclose(out0[:, :, 1].T, torch.tensor([[0.7, 0.3], [0.9, 0.5]]))


class FakeTokenizer:
    def __call__(self, texts):
        return torch.tensor([[sum(map(ord, t)) % 997, len(t)] for t in texts])


class FakeCLIP(torch.nn.Module):
    """encode_text: a fixed random function of the tokens (unnormalised, like CLIP); an image tower `visual`."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.table = torch.nn.Parameter(torch.randn(997, 8, generator=g), requires_grad=False)
        self.visual = torch.nn.Linear(2, 2)
        self.calls = 0

    def encode_text(self, tokens):
        self.calls += 1
        return self.table[tokens[:, 0]] * (1 + tokens[:, 1:2].float())


def test_ensemble_is_mean_of_normalised_then_renormalised():
    clip, tok = FakeCLIP(), FakeTokenizer()
    emb = T.ensemble_embeddings(clip, tok, ["dog", "cat"], "imagenet", batch_size=7)
    raw = clip.encode_text(tok([t.format("cat") for t in IMAGENET_TEMPLATES]))
    expected = raw / raw.norm(dim=1, keepdim=True)
    expected = expected.mean(0) / expected.mean(0).norm()
    assert torch.allclose(emb[1], expected, atol=1e-6)
    assert torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-6)


def test_explicit_single_template_is_the_normalised_prompt_embedding():
    clip, tok = FakeCLIP(), FakeTokenizer()
    emb = T.ensemble_embeddings(clip, tok, ["chair", "lamp"], ("a {} in a scene",))
    raw = clip.encode_text(tok(["a chair in a scene", "a lamp in a scene"]))
    assert torch.allclose(emb, F.normalize(raw, dim=-1), atol=1e-6)


def test_cache_hit_and_invalidation(tmp_path):
    clip, tok = FakeCLIP(), FakeTokenizer()
    kw = dict(model_name="tiny", cache_dir=tmp_path / "text")
    emb, owner = T.text_embeddings(clip, tok, ["a; b", "c"], "vild", **kw)
    n = clip.calls
    again, owner2 = T.text_embeddings(clip, tok, ["a; b", "c"], "vild", **kw)
    assert clip.calls == n and torch.equal(emb, again) and owner == owner2 == [0, 0, 1]
    assert len(list((tmp_path / "text").glob("tiny-*.npy"))) == 1
    T.text_embeddings(clip, tok, ["a; b", "c"], "imagenet", **kw)  # other templates -> re-encoded
    assert clip.calls > n
    n = clip.calls
    with torch.no_grad():
        clip.visual.weight.add_(1.0)  # a distilled image tower: same text tower -> the cache still serves
    T.text_embeddings(clip, tok, ["a; b", "c"], "vild", **kw)
    assert clip.calls == n
    with torch.no_grad():
        clip.table[0, 0] += 1e-3  # another text tower -> re-encoded
    T.text_embeddings(clip, tok, ["a; b", "c"], "vild", **kw)
    assert clip.calls > n
    assert len(list((tmp_path / "text").glob("tiny-*.npy"))) == 3


def test_text_tower_digest_ignores_the_image_tower_and_sees_every_text_tensor():
    a, b = FakeCLIP(), FakeCLIP()
    assert T.text_tower_digest(a) == T.text_tower_digest(b)
    with torch.no_grad():
        b.visual.bias.add_(1.0)
    assert T.text_tower_digest(a) == T.text_tower_digest(b)
    b.table.data = b.table.data.to(torch.bfloat16)  # same values' dtype change is a different tower
    assert T.text_tower_digest(a) != T.text_tower_digest(b)


def test_resolve_checkpoint(tmp_path):
    cfg = {"student": {"checkpoint": "models/x.pt"}, "method": {"train": True}, "paths": {"results": str(tmp_path)}}
    assert T.resolve_checkpoint(cfg, "declip") == tmp_path / "distill" / "declip" / "model.pt"
    assert T.resolve_checkpoint(cfg, "clip").name == "x.pt"
    assert T.resolve_checkpoint(cfg, "declip", str(tmp_path / "y.pt")) == tmp_path / "y.pt"
