"""Models whose layers differ (issue: hybrid layers): layer kinds and per-layer sizes inferred, features of
the layers that have heads, heads of different widths (Gemma 4) through HeadFeatures and SAV, fitted end to
end. The activation contract itself runs on these families in tests/test_trace.py."""

import pytest
import torch
from conftest import tiny

import savlens
from savlens.cache import HeadFeatures
from savlens.errors import HookNotAvailableError
from savlens.testing.tiny import HYBRID_FAMILIES, RECIPES, sample_images

KINDS = {
    "qwen3_5": ("linear_attention", "attention", "linear_attention"),
    "qwen3_5_text": ("linear_attention", "attention", "linear_attention"),
    "lfm2": ("convolution", "attention", "convolution"),
    "lfm2_vl": ("convolution", "attention", "convolution"),
    "mllama": ("attention", "cross_attention", "attention"),
    "gemma4": ("attention", "attention", "attention"),
    "gemma4_text": ("attention", "attention", "attention"),
    "phi4_multimodal": ("attention", "attention", "attention"),
}


def test_every_hybrid_family_has_its_expected_layers() -> None:
    assert set(HYBRID_FAMILIES) == set(KINDS)


@pytest.mark.parametrize("family", HYBRID_FAMILIES)
def test_layer_kinds_and_sizes_are_inferred(family: str) -> None:
    model = tiny(family)
    rs = model.resolved
    assert rs.source == "inferred" and rs.kinds == KINDS[family]
    for i, info in enumerate(rs.layers):
        if info.has_heads:
            o = model.module(rs.block_path(i, "o_proj"))
            assert o.in_features == info.n_heads * info.d_head  # type: ignore[union-attr]
        else:
            assert info.n_heads == 0 and info.q_proj is None
            assert model.module(rs.block_path(i, "o_proj")).out_features == 64  # type: ignore[union-attr]
    widths = [info.d_head for info in rs.layers if info.has_heads]
    assert (len(set(widths)) > 1) == family.startswith("gemma4")  # sliding 16, global 32
    assert any(info.gated_q for info in rs.layers) == family.startswith("qwen3_5")
    assert all(info.fused_qkv for info in rs.layers if info.has_heads) == (family == "phi4_multimodal")


def _examples(family: str, n: int = 8) -> list[savlens.Example]:
    words = ["red", "blue"]
    rec = RECIPES[family]
    imgs = sample_images(n, seed=7, sizes=rec.image_sizes[:1]) if rec.vlm else [None] * n
    return [
        savlens.Example(
            f"what color is the {words[i % 2]} circle ?", images=[imgs[i]] if rec.vlm else [], label=words[i % 2]
        )
        for i in range(n)
    ]


@pytest.mark.parametrize("family", HYBRID_FAMILIES)
def test_features_of_the_head_layers_fit_sav_end_to_end(family: str) -> None:
    model = tiny(family)
    exs = _examples(family)
    feats = savlens.extract(model, exs, batch_size=4, progress=False)
    heads = tuple(i for i, k in enumerate(model.resolved.kinds) if k == "attention")
    assert feats.layers == heads  # HeadFeatures records the layers it read
    assert feats.z.shape[:3] == (8, len(heads), 4)
    sav = savlens.SAV(k=4).fit(feats)
    assert all(h.layer in heads for h in sav.heads_)
    assert set(sav.predict(feats)) <= {"red", "blue"}
    assert sav.score(feats) > 0.5  # the label word is in the prompt: the heads tell the classes apart
    if "cross_attention" in model.resolved.kinds:
        cross = savlens.extract(model, exs, names="blocks.*.cross_attn.hook_z", batch_size=4, progress=False)
        assert cross.layers == (1,)
        with pytest.raises(HookNotAvailableError, match=r"layer 1 \(cross attention\) has no such hook"):
            savlens.extract(model, exs, names="blocks.1.attn.hook_z", progress=False)


def test_heads_of_different_widths_equal_sav_on_each_heads_own_vector() -> None:
    """Gemma 4: the global layer's heads are 32 wide, the sliding layers' 16; zero-padding to 32 changes no
    centroid score, no selected head and no vote."""
    model = tiny("gemma4_text")
    exs = [savlens.Example(e.text, label=e.label) for e in _examples("gemma4_text", 12)]
    feats = savlens.extract(model, exs, batch_size=6, progress=False)
    widths = [info.d_head for info in model.resolved.layers]
    assert widths == [16, 16, 32] and feats.z.shape[-1] == 32
    for layer, w in enumerate(widths):
        assert torch.count_nonzero(feats.z[:, layer, :, w:]) == 0  # the padding is zeros
        assert torch.count_nonzero(feats.z[:, layer, :, :w]) > 0
    sav = savlens.SAV(k=6).fit(feats)
    # the same, head by head, on each head's own (unpadded) vector
    from savlens.scoring import centroid_accuracy

    padded = centroid_accuracy(feats).scores
    for layer, w in enumerate(widths):
        own = HeadFeatures(feats.z[:, layer : layer + 1, :, :w].clone(), labels=feats.labels)
        assert torch.equal(centroid_accuracy(own).scores[0], padded[layer])
    votes = sav.votes(feats)
    for rank, head in enumerate(sav.heads_):
        w = widths[head.layer]
        x = feats.z[:, head.layer, head.head, :w]
        mu = torch.stack([x[[i for i, y in enumerate(feats.labels) if y == c]].mean(0) for c in sav.classes_])
        sim = torch.nn.functional.cosine_similarity(x[:, None], mu[None], dim=-1)
        assert torch.allclose(votes.similarity[:, rank], sim, atol=1e-6)


def test_mixed_width_features_go_through_the_store_and_save_load(tmp_path: object) -> None:
    from pathlib import Path

    model = tiny("gemma4_text")
    exs = [savlens.Example(e.text, label=e.label, id=f"e{i}") for i, e in enumerate(_examples("gemma4_text", 8))]
    store = Path(str(tmp_path)) / "store"
    feats = savlens.extract(model, exs, batch_size=3, store=store, progress=False)
    again = savlens.extract(model, exs, batch_size=3, store=store, progress=False)  # read back from the shards
    assert torch.equal(again.z, feats.z) and feats.z.shape[-1] == 32
    sav = savlens.SAV(k=5).fit(feats)
    sav.save(Path(str(tmp_path)) / "g4.sav")
    loaded = savlens.SAV.load(Path(str(tmp_path)) / "g4.sav")
    assert loaded.predict(feats) == sav.predict(feats)
    assert [str(h) for h in loaded.heads_] == [str(h) for h in sav.heads_]
